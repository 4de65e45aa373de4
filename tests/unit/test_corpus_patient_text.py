"""Patient names of real corpus files reach the index and go back out as they were received.

Two ways a name was damaged on its path through the archive:

- a Patient Name received with a binary VR (UN from a node that did not know the attribute,
  or a wrong OB) was indexed as Python's literal of the bytes ("b'AAAA...'"), and identity
  patching then sent that literal as the name in every other instance of the patient;
- a GB 2312 name (ISO 2022 IR 58) never matched its own index entry (pydicom leaves the
  escape sequences in the decoded text), so every retrieve "corrected" it and pydicom wrote
  it back without escape sequences: every reader then showed mojibake.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pydicom
import pytest

from solent.app import Archive
from solent.dicom.parse import parse_file
from solent.services.retrieve import RetrieveService
from tests.unit.dimse_peer import registered_scu

#: Corpus files whose Patient Name is in a character set other than ASCII, carrying the UIDs
#: an instance needs (the cs_ files without them are refused, see test_corpus_import).
CHARSET_FILES = (
    "cs_arabic_ir127.dcm",
    "cs_cyrillic_ir144.dcm",
    "cs_gb18030.dcm",
    "cs_gb2312_iso2022_ir58.dcm",
    "cs_greek_ir126.dcm",
    "cs_hebrew_ir138.dcm",
    "cs_japanese_ir13_ir87.dcm",
    "cs_japanese_iso2022_ir87.dcm",
    "cs_korean_iso2022_ir149.dcm",
    "cs_latin1_french.dcm",
    "cs_latin1_german.dcm",
    "cs_utf8_ir192.dcm",
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("fuzz_patientname_64kb.dcm", "A" * 324), ("fuzz_pn_encoded_as_ob.dcm", "\xff\xfe\xfd")],
)
def test_a_name_received_with_a_binary_vr_is_indexed_as_text(
    corpus_dir: Path, name: str, expected: str
) -> None:
    parsed = parse_file(corpus_dir / name)
    assert parsed.patient["name"] == expected


def test_charset_names_go_out_byte_for_byte_as_received(
    archive: Archive, corpus_dir: Path, tmp_path: Path
) -> None:
    peer = registered_scu(archive)
    who = peer.principal
    svc = RetrieveService(archive.index, archive.store, archive.access, archive.audit)
    for name in CHARSET_FILES:
        path = tmp_path / name
        shutil.copy(corpus_dir / name, path)
        assert archive.ingestor.ingest_file(path, who, peer.provenance).ok, name
        original = pydicom.dcmread(path)
        (inst,) = [
            i
            for i in svc.instances(who, str(original.StudyInstanceUID), channel="test")
            if i.sop_instance_uid == original.SOPInstanceUID
        ]
        out = b"".join(svc.patched_bytes(who, inst, svc.current_identity(who, who.trust)))
        sent = pydicom.dcmread(io.BytesIO(out))
        assert str(sent.PatientName) == str(original.PatientName), name
        assert sent.PatientName.original_string == original.PatientName.original_string, name
        # the name was not "corrected": no Original Attributes item records a PatientName
        for item in sent.get("OriginalAttributesSequence", []):
            for modified in item.ModifiedAttributesSequence:
                assert "PatientName" not in modified, name
