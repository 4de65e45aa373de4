"""Instances received without preamble or file meta go out as Part 10 files.

The archive stores what it was sent; WADO-RS (application/dicom, as stored or when the stored
syntax was asked for) and WADO-URI served those bytes as they were, which no Part 10 reader
takes (pydicom: "File is missing DICOM File Meta Information header", DCMTK, dicomParser).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pydicom
import pytest

from solent.app import Archive
from tests.unit.dimse_peer import registered_scu

#: Corpus files without preamble and file meta that carry an instance's UIDs.
NO_META = ("mod_ot_palette_face_nometa.dcm", "obj_rtstruct_nopreamble.dcm")


@pytest.mark.parametrize("name", [*NO_META, "meta_no_meta_explicit_le.dcm"])
def test_an_instance_stored_without_file_meta_is_served_as_a_part10_file(
    archive: Archive, corpus_dir: Path, tmp_path: Path, name: str
) -> None:
    peer = registered_scu(archive)
    who = peer.principal
    path = tmp_path / name
    shutil.copy(corpus_dir / name, path)
    original = pydicom.dcmread(path, force=True)
    if "StudyInstanceUID" not in original:  # meta_no_meta_explicit_le: give it its UIDs
        original.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.7.1"
        original.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.7.2"
        original.SOPInstanceUID = "1.2.826.0.1.3680043.2.1125.7.3"
        original.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        original.save_as(path, implicit_vr=False, little_endian=True)  # still no file meta
    assert path.read_bytes()[128:132] != b"DICM"
    assert archive.ingestor.ingest_file(path, who, peer.provenance).ok
    svc = archive.services.retrieve
    (inst,) = svc.instances(who, str(original.StudyInstanceUID), channel="test")
    identity = svc.current_identity(who, who.trust)
    for _ in range(2):  # the first retrieve, then one after the outcome was cached
        sent = pydicom.dcmread(io.BytesIO(b"".join(svc.patched_bytes(who, inst, identity))))
        assert sent.file_meta.TransferSyntaxUID == inst.transfer_syntax_uid
        assert sent.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
        assert sent.file_meta.MediaStorageSOPClassUID == original.SOPClassUID
        assert sent.get("PixelData") == original.get("PixelData")
        assert sent.get("PatientName") == original.get("PatientName")
