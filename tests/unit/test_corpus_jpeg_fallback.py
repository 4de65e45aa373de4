"""12-bit JPEG streams libjpeg refuses are decoded through libjpeg-turbo.

The WG04 mammogram and NM samples with non-conformant 12-bit JPEG headers make pylibjpeg's
libjpeg fail ("A misplaced marker", -1038). The archive stores them (structurally sound); every
decoded view of them failed: /rendered, thumbnails, the viewer's first-image preview, WADO-RS
uncompressed and C-GET to a peer without JPEG Extended (406 / failed sub-operation).
libjpeg-turbo decodes them, to the pixels of the conformant twin (lossy JPEG: decoders may
differ by one in the last bit of the IDCT).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from solent.app import Archive
from solent.dicom import transcode as tc
from solent.services.retrieve import RetrieveKeys
from tests.unit.dimse_peer import registered_scu


def test_a_nonconformant_12bit_jpeg_decodes_to_its_conformant_twin(corpus_dir: Path) -> None:
    twin = pydicom.dcmread(corpus_dir / "ts_jpeg_extended_12bit_nm.dcm").pixel_array
    path = corpus_dir / "ts_jpeg_extended_12bit_nm_nonconformant.dcm"
    with path.open("rb") as fp:
        ds = pydicom.dcmread(io.BytesIO(tc.transcode_instance(fp, tc.EXPLICIT_LE)))
    assert ds.file_meta.TransferSyntaxUID == tc.EXPLICIT_LE
    got = ds.pixel_array.astype(np.int32)
    assert got.shape == twin.shape
    assert np.abs(got - twin.astype(np.int32)).max() <= 1


@pytest.mark.parametrize(
    "name",
    ["ts_jpeg_extended_12bit_nm_nonconformant.dcm", "mod_mg_sc_wg04_jpeg_12bit_nonconformant.dcm"],
)
def test_frames_and_whole_file_of_a_nonconformant_12bit_jpeg_decode(
    corpus_dir: Path, name: str
) -> None:
    path = corpus_dir / name
    ds = pydicom.dcmread(path)
    with pytest.raises(Exception):  # noqa: B017 - what pydicom alone does, whatever it raises
        _ = ds.pixel_array
    header = tc.header_from_json(
        {
            "00280010": {"Value": [ds.Rows]},
            "00280011": {"Value": [ds.Columns]},
            "00280002": {"Value": [ds.SamplesPerPixel]},
            "00280100": {"Value": [ds.BitsAllocated]},
            "00280101": {"Value": [ds.BitsStored]},
            "00280103": {"Value": [ds.PixelRepresentation]},
            "00280004": {"Value": [ds.PhotometricInterpretation]},
        }
    )
    assert header is not None
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    arr = tc.decode_frame(frame, header, str(ds.file_meta.TransferSyntaxUID))
    assert arr.shape == (ds.Rows, ds.Columns)
    assert 0 < int(arr.max()) < 2**ds.BitsStored and arr.std() > 0
    with path.open("rb") as fp:
        assert np.array_equal(tc.decode_file_frame(fp, 0), arr)


@pytest.mark.parametrize(
    "name", ["ts_jpegxl_us_27frames.dcm", "mod_mg_sc_wg04_jpeg_12bit_nonconformant.dcm"]
)
def test_a_peer_without_the_stored_syntax_gets_it_decoded(
    archive: Archive, corpus_dir: Path, tmp_path: Path, name: str
) -> None:
    """What C-GET / C-MOVE send to a peer that accepted only uncompressed syntaxes. pydicom
    3.0 neither decodes JPEG XL nor knows it as a transfer syntax ("UID is not a transfer
    syntax"), and libjpeg refuses the mammogram: every such sub-operation failed."""
    peer = registered_scu(archive)
    who = peer.principal
    path = tmp_path / name
    shutil.copy(corpus_dir / name, path)
    assert archive.ingestor.ingest_file(path, who, peer.provenance).ok
    original = pydicom.dcmread(path, stop_before_pixels=True)
    svc = archive.services.retrieve
    keys = RetrieveKeys("STUDY", study_uids=(str(original.StudyInstanceUID),))
    (ref,) = svc.locate(who, keys, channel="test", destination="test")
    ds = svc.uncompressed(who, ref, svc.current_identity(who, who.trust))
    assert ds.file_meta.TransferSyntaxUID == tc.EXPLICIT_LE
    frames = int(original.get("NumberOfFrames", 1) or 1)
    shape = (original.Rows, original.Columns, int(original.SamplesPerPixel))
    arr = ds.pixel_array
    assert arr.size == frames * shape[0] * shape[1] * shape[2] and arr.std() > 0
