"""A name in GB 2312 with ISO 2022 code extensions (PS3.5 H.3.2, Specific Character Set
``\\ISO 2022 IR 58``) reads as plain Unicode in QIDO JSON, WADO metadata and the index."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from solent.app import Archive
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.protocols.http import create_app
from tests.conftest import http_headers

#: PS3.5 H.3.2: Zhang^XiaoDong=张^小东= with ESC $ ) A designating GB 2312 to G1.
RAW_NAME = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab="


def _gb2312_file(path: Path, study: str) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 58"]
    ds.add_new(0x00100010, "PN", RAW_NAME)
    ds.PatientID, ds.IssuerOfPatientID = "GB1", "ZZA"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.Modality, ds.StudyDate = "OT", "20250314"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_escape_sequences_are_not_part_of_the_name(archive: Archive, tmp_path: Path) -> None:
    """Before: pydicom's GB 2312 decoder kept the ESC $ ) A designations in the text, so QIDO,
    C-FIND and metadata answered 'Zhang^XiaoDong=\\x1b$)A张^\\x1b$)A小东'."""
    study = generate_uid()
    who = Principal(PrincipalKind.IMPORTER, "test", "ZZA")
    path = _gb2312_file(tmp_path / "gb.dcm", study)
    assert archive.ingestor.ingest_file(path, who, Provenance(Channel.IMPORT)).ok
    with TestClient(create_app(archive), headers=http_headers(archive)) as client:
        [found] = client.get("/dicomweb/studies", params={"StudyInstanceUID": study}).json()
        [meta] = client.get(f"/dicomweb/studies/{study}/metadata").json()
    expected = {"Alphabetic": "Zhang^XiaoDong", "Ideographic": "张^小东"}
    assert found["00100010"]["Value"][0] == expected
    assert meta["00100010"]["Value"][0] == expected
