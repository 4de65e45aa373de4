"""R57 split seen by a real DICOM client: after a PACS manager splits a series out of a study
(JSON API of a real `solent serve`), DCMTK findscu lists both studies with their own counts and
getscu retrieves the moved instance under its new Study Instance UID, the stored one kept in
Original Attributes Sequence; after the reversal findscu lists the one study again."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from solent.app import build_archive
from solent.settings import load_settings
from tests.conftest import RunningServer, require_tool, start_server
from tests.interop.hl7_support import Api, findscu, ingest, prepare_data_dir, write_ct

pytestmark = pytest.mark.interop

STUDY = "2.25.5770001"
PATIENT = {"patient_id": "B5770", "issuer": "ZZB", "name": "SPLIT^SAM", "birth_date": "19700101"}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[RunningServer]:
    require_tool("findscu")
    require_tool("getscu")
    data = tmp_path / "var"
    prepare_data_dir(data)
    archive = build_archive(load_settings(environ={}, data_dir=data))
    try:  # a ZZB workstation that may query and retrieve (C-GET)
        archive.index.add_node("ZZBWS", "127.0.0.1", 104, "ZZB", ["store", "query", "retrieve"])
    finally:
        archive.close()
    server = start_server(data)
    try:
        yield server
    finally:
        server.stop()


def _studies(server: RunningServer, out: Path) -> dict[str, tuple[int, int]]:
    """Study UID -> (series, instances) as a study-level C-FIND for the patient answers."""
    rows = findscu(
        int(server.ports["dicom"]),
        out,
        "ZZBWS",
        "QueryRetrieveLevel=STUDY",
        f"PatientID={PATIENT['patient_id']}",
        "StudyInstanceUID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    )
    return {
        str(r.StudyInstanceUID): (
            int(r.NumberOfStudyRelatedSeries),
            int(r.NumberOfStudyRelatedInstances),
        )
        for r in rows
    }


def test_a_split_study_is_found_and_retrieved_under_its_new_uid(
    served: RunningServer, tmp_path: Path
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    common = {**PATIENT, "accession": "ACC5770", "study_uid": STUDY, "study_date": "20250314"}
    kept = write_ct(files / "kept.dcm", **common)
    moved = write_ct(files / "moved.dcm", **common)
    ingest(served.data_dir, "ZZB", kept, moved)
    series = str(pydicom.dcmread(moved).SeriesInstanceUID)
    assert _studies(served, tmp_path / "find0") == {STUDY: (2, 2)}

    api = Api(served.base_url, served.admin_headers())
    body = {"series_uids": [series], "accession_number": "ACC5771", "reason": "two exams"}
    r = api.client.post(f"/api/identity/studies/{STUDY}/split", json=body)
    assert r.status_code == 200, r.text
    edit = r.json()
    new = edit["to_study_uid"]
    assert _studies(served, tmp_path / "find1") == {STUDY: (1, 1), new: (1, 1)}

    out = tmp_path / "get"
    out.mkdir()
    result = subprocess.run(
        [
            "getscu",
            "-S",
            "-aet",
            "ZZBWS",
            "-aec",
            "SOLENT",
            "-od",
            str(out),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={new}",
            "127.0.0.1",
            str(served.ports["dicom"]),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (received,) = [pydicom.dcmread(p) for p in out.iterdir()]
    assert (received.StudyInstanceUID, received.SeriesInstanceUID) == (new, series)
    assert received.AccessionNumber == "ACC5771"
    kept_values = received.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0]
    assert (kept_values.StudyInstanceUID, kept_values.AccessionNumber) == (STUDY, "ACC5770")
    assert received.PixelData == pydicom.dcmread(moved).PixelData

    back = api.client.post(
        f"/api/identity/study-edits/{edit['id']}/reverse", json={"reason": "one exam after all"}
    )
    assert back.status_code == 200, back.text
    assert _studies(served, tmp_path / "find2") == {STUDY: (2, 2)}
