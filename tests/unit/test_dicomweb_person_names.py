"""Person Names in QIDO-RS answers and WADO-RS metadata keep their component groups.

PS3.18 F.2.2: a PN value is an object with Alphabetic, Ideographic and Phonetic members. Found
probing with the shared corpus (cs_gb18030.dcm, cs_japanese_ir13_ir87.dcm, ...): names written
from the index (QIDO rows, the patient identity patched into metadata) came back as one
Alphabetic string holding ``Wang^XiaoDong=王^小东``, unlike the file's own DICOM JSON.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

from solent.app import Archive
from solent.dicom.metadata_json import person_name_json
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.protocols.http import create_app
from tests.conftest import http_headers

# One file per way of writing component groups: single-byte, GB18030, UTF-8 with an
# Ideographic group, ISO 2022 with all three groups, ISO 2022 Korean, Latin-1 Alphabetic only.
FILES = [
    "cs_gb18030.dcm",
    "cs_utf8_ir192.dcm",
    "cs_japanese_ir13_ir87.dcm",
    "cs_korean_iso2022_ir149.dcm",
    "cs_latin1_german.dcm",
]


def test_person_name_json_splits_component_groups() -> None:
    assert person_name_json("Doe^Jane") == {"Alphabetic": "Doe^Jane"}
    assert person_name_json("Wang^XiaoDong=王^小东") == {
        "Alphabetic": "Wang^XiaoDong",
        "Ideographic": "王^小东",
    }
    assert person_name_json("ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう") == {
        "Alphabetic": "ﾔﾏﾀﾞ^ﾀﾛｳ",
        "Ideographic": "山田^太郎",
        "Phonetic": "やまだ^たろう",
    }
    assert person_name_json("=山田^太郎") == {"Alphabetic": "", "Ideographic": "山田^太郎"}


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive), raise_server_exceptions=False) as c:
        yield c


def _pn(obj: dict[str, Any], tag: str) -> Any:
    return obj.get(tag, {}).get("Value")


def test_qido_and_metadata_names_equal_the_files_dicom_json(
    archive: Archive, client: TestClient, corpus_dir: Path, tmp_path: Path
) -> None:
    principal = Principal(PrincipalKind.IMPORTER, "solent-import", "ZZA")
    headers = {**http_headers(archive), "Accept": "application/dicom+json"}
    for name in FILES:
        path = tmp_path / name
        shutil.copy(corpus_dir / name, path)
        result = archive.ingestor.ingest_file(
            path, principal, Provenance(Channel.IMPORT, source_path=str(path))
        )
        assert result.ok, (name, result)
        ds = pydicom.dcmread(path)
        expected = ds.to_json_dict()["00100010"]["Value"]
        assert "=" in str(ds.PatientName) or name == "cs_latin1_german.dcm"
        study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        answers = [
            client.get("/dicomweb/studies", params={"PatientID": ds.PatientID}, headers=headers),
            client.get(f"/dicomweb/studies/{study}/series", headers=headers),
            client.get(f"/dicomweb/studies/{study}/series/{series}/instances", headers=headers),
            client.get(f"/dicomweb/studies/{study}/metadata", headers=headers),
            client.get(
                f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata",
                headers=headers,
            ),
        ]
        for r in answers:
            assert r.status_code == 200, (name, r.url, r.text)
            rows = [row for row in r.json() if _pn(row, "00100010") is not None]
            assert rows, (name, r.url)
            for row in rows:
                assert _pn(row, "00100010") == expected, (name, str(r.url))
