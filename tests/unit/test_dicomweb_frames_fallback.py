"""The viewer's frame request falls back to its second choice when the pixels cannot take the
first: a 1-bit segmentation or a float parametric map has no compressed encoding.

The viewer asks for frames of an uncompressed (or browser-undecodable) instance as
``image/jphc`` (HTJ2K) first and uncompressed second (q=0.5). The archive took only the first
choice and answered 406 "1-bit pixel data is served natively ..." / "float pixel data has no
compressed transfer syntax": those images never showed, though uncompressed was acceptable.
"""

from __future__ import annotations

import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.encaps import generate_frames

from solent.app import Archive
from solent.protocols.http import create_app
from tests.conftest import http_headers
from tests.unit.dimse_peer import registered_scu

DEFLATED_IMAGE_FRAME = "1.2.840.10008.1.2.8.1"
#: data.ts TRANSCODED: what the viewer sends for a frame stored uncompressed.
VIEWER_ACCEPT = (
    'multipart/related; type="image/jphc"; transfer-syntax=1.2.840.10008.1.2.4.201, '
    "multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1; "
    "q=0.5"
)


@pytest.mark.parametrize(
    "name",
    [
        "px_nonbyte_aligned_1bit_seg.dcm",  # 1-bit SEG, native
        "ts_deflated_image_frame_seg.dcm",  # 1-bit SEG, Deflated Image Frame Compression
        "mod_parametric_map_float.dcm",  # Float Pixel Data
        "px_float_parametric_map_double.dcm",  # Double Float Pixel Data
    ],
)
def test_frames_come_uncompressed_when_htj2k_cannot_carry_them(
    archive: Archive, corpus_dir: Path, tmp_path: Path, name: str
) -> None:
    peer = registered_scu(archive)
    path = tmp_path / name
    shutil.copy(corpus_dir / name, path)
    assert archive.ingestor.ingest_file(path, peer.principal, peer.provenance).ok
    ds = pydicom.dcmread(path)
    url = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/1"
    )
    with TestClient(create_app(archive)) as client:
        r = client.get(url, headers={**http_headers(archive), "Accept": VIEWER_ACCEPT})
        assert r.status_code == 200, r.text
        boundary = re.search(r"boundary=\"?([^\";]+)", r.headers["content-type"])
        assert boundary is not None
        part = r.content.split(b"--" + boundary.group(1).encode())[1]
        head, _, body = part.partition(b"\r\n\r\n")
        assert b"transfer-syntax=1.2.840.10008.1.2.1" in head
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if ds.file_meta.TransferSyntaxUID == DEFLATED_IMAGE_FRAME:  # pydicom cannot decode it
            fragment = next(generate_frames(ds.PixelData, number_of_frames=frames))
            assert body[:-2] == zlib.decompressobj(-zlib.MAX_WBITS).decompress(fragment)
            return
        first = ds.pixel_array[0] if frames > 1 else ds.pixel_array
        if int(ds.get("BitsAllocated", 0) or 0) == 1:
            got = np.unpackbits(np.frombuffer(body[:-2], np.uint8), bitorder="little")
            assert np.array_equal(got[: first.size], first.reshape(-1))
        else:
            got = np.frombuffer(body[:-2], first.dtype.newbyteorder("<"))
            assert np.array_equal(got, first.reshape(-1))
