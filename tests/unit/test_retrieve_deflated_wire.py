"""A deflated instance goes out on the DIMSE wire with an even length (PS3.5 A.5).

The deflate stream of a stored file can be of odd length (ts_deflated_sc_image.dcm's is 4303
bytes). Sent as stored, DCMTK's getscu and storescp refused it ("Odd Fragment Length") and the
C-GET/C-MOVE sub-operation failed; one trailing NUL makes it even and inflates the same.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info

from solent.app import Archive
from solent.services.retrieve_bytes import split_part10
from tests.unit.dimse_peer import registered_scu


def _odd_deflated(source: Path, target: Path) -> None:
    """``source`` with an identity the record will keep (nothing to patch on the way out),
    deflated as some writers do, without padding an odd-length stream (pydicom pads)."""
    ds = pydicom.dcmread(source)
    ds.PatientID = "D1"
    ds.IssuerOfPatientID = "ZZA"
    ds.PatientName = "DEFLATE^TEST"
    meta = io.BytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    for extra in range(64):
        ds.StudyDescription = "X" * (extra + 1) + ("" if extra % 2 else " ")
        plain = DicomBytesIO()
        plain.is_little_endian, plain.is_implicit_VR = True, False
        write_dataset(plain, ds)
        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        deflated = packer.compress(plain.getvalue()) + packer.flush()
        if len(deflated) % 2:
            target.write_bytes(b"\0" * 128 + b"DICM" + meta.getvalue() + deflated)
            return
    raise AssertionError("no odd-length deflate stream found")


def test_deflated_instance_goes_out_with_an_even_length(
    archive: Archive, corpus_dir: Path, tmp_path: Path
) -> None:
    peer = registered_scu(archive)
    path = tmp_path / "odd.dcm"
    _odd_deflated(corpus_dir / "ts_deflated_sc_image.dcm", path)
    stored = path.read_bytes()
    stored_dataset = stored[split_part10(stored)[1] :]
    assert archive.ingestor.ingest_file(path, peer.principal, peer.provenance).ok
    svc = archive.services.retrieve
    who = peer.principal
    original = pydicom.dcmread(io.BytesIO(stored))
    (inst,) = svc.instances(who, str(original.StudyInstanceUID), channel="test")
    identity = svc.current_identity(who, who.trust)
    out = svc.open_encoded(who, inst, identity)  # what C-GET / C-MOVE stream
    try:
        sent = out.prefix + (out.rest.read(out.remaining) if out.rest is not None else b"")
    finally:
        out.close()
    assert len(sent) % 2 == 0
    inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(sent)
    assert inflated == zlib.decompressobj(-zlib.MAX_WBITS).decompress(stored_dataset)
