"""What DICOM says after a change (issue 5), and the query/worklist scoping around identity.

A real `solent serve`, real MLLP (python-hl7), DCMTK findscu/getscu and HTTP: after an HL7
A40 merge or A08 update, every way DICOM leaves Solent carries the record's current identity
(the stored file is untouched; the old values sit in Original Attributes Sequence). A24/A37
links and retired identifiers (A40/A47) drive QIDO-RS and C-FIND; the worklist is per trust.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from solent.app import build_archive
from solent.settings import load_settings
from tests.conftest import RunningServer, require_tool, start_server
from tests.interop.hl7_support import (
    Api,
    findscu,
    ingest,
    msa,
    prepare_data_dir,
    send,
    write_ct,
)
from tests.interop.test_hl7_scenarios import A24, A37, A47, adt

NHS = "9434765919"
MERGED_CT = "2.25.7700001"
UPDATED_CT = "2.25.7700002"
LINK_A = "2.25.7700003"
LINK_B = "2.25.7700004"
RENUMBERED = "2.25.7700005"


class Site:
    def __init__(self, server: RunningServer, data: Path, files: Path) -> None:
        self.server = server
        self.data = data
        self.files = files
        self.api = Api(server.base_url, server.headers())

    def send(self, *messages: str) -> list[str]:
        return [msa(a)[0] for a in send(int(self.server.ports["hl7"]), *messages)]

    def ct(self, trust: str, file: str, **kw: str) -> Path:
        path = write_ct(self.files / f"{file}.dcm", **kw)  # type: ignore[arg-type]
        ingest(self.data, trust, path)
        return path

    def find(self, aet: str, *keys: str, model: str = "-S") -> list[pydicom.Dataset]:
        out = self.files / f"find-{len(list(self.files.iterdir()))}"
        return findscu(int(self.server.ports["dicom"]), out, aet, *keys, model=model)

    def qido(self, **params: str) -> list[dict[str, dict[str, object]]]:
        r = self.api.get("/dicomweb/studies", **params)
        assert r.status_code == 200, r.text
        result: list[dict[str, dict[str, object]]] = r.json()
        return result


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_tool("findscu")
    root = tmp_path_factory.mktemp("identity-out")
    data = root / "var"
    prepare_data_dir(data)
    archive = build_archive(load_settings(environ={}, data_dir=data))
    try:  # a ZZB workstation that may also retrieve (C-GET)
        archive.index.add_node("ZZBWS", "127.0.0.1", 104, "ZZB", ["store", "query", "retrieve"])
    finally:
        archive.close()
    server = start_server(data)
    files = root / "files"
    files.mkdir()
    try:
        yield Site(server, data, files)
    finally:
        server.stop()


def _value(obj: dict[str, dict[str, object]], tag: str) -> object:
    values = obj[tag].get("Value")
    assert isinstance(values, list), obj[tag]
    first = values[0]
    return first["Alphabetic"] if isinstance(first, dict) and "Alphabetic" in first else first


def _nhs_items(obj: dict[str, dict[str, object]]) -> list[object]:
    seq = obj.get("00101002", {}).get("Value") or []
    assert isinstance(seq, list)
    return [_value(item, "00100020") for item in seq]


def _parts(body: bytes, content_type: str) -> list[bytes]:
    boundary = re.search(r'boundary="?([^";]+)', content_type)
    assert boundary, content_type
    out = []
    for chunk in body.split(b"--" + boundary.group(1).encode())[1:-1]:
        out.append(chunk.split(b"\r\n\r\n", 1)[1][:-2])
    return out


def test_merge_changes_what_every_interface_says(site: Site) -> None:
    stored = site.ct(
        "ZZB",
        "merged",
        patient_id="BTMP7701",
        issuer="ZZB",
        name="UNKNOWN^MALE",
        birth_date="19650101",
        accession="ACC7701",
        study_uid=MERGED_CT,
        study_date="20250314",
    )
    original = stored.read_bytes()
    study = site.api.get(f"/dicomweb/studies/{MERGED_CT}/metadata")
    assert study.status_code == 200
    etag = study.headers["etag"]
    assert _value(study.json()[0], "00100020") == "BTMP7701"
    assert site.send(adt("ZZB", "OUT-1", "B7701", event="A04", nhs=NHS)) == ["AA"]
    merge = (
        "MSH|^~\\&|PAS|ZZB|PACS|ZZX|20250314101500||ADT^A40^ADT_A39|OUT-2|P|2.4\n"
        "EVN|A40|20250314101500\n"
        f"PID|1||B7701^^^ZZB^MR~{NHS}^^^NHS^NH||CARTER^JAMES^PAUL^^MR||19620417|M"
        + "|"
        * 24
        + "NSTS01\n"
        "MRG|BTMP7701^^^ZZB^MR\n"
    )
    assert site.send(merge) == ["AA"]

    # WADO-RS metadata at every level, and no stale 304 for the old ETag.
    series_uid = pydicom.dcmread(stored).SeriesInstanceUID
    sop = pydicom.dcmread(stored).SOPInstanceUID
    base = f"/dicomweb/studies/{MERGED_CT}"
    for path in (
        f"{base}/metadata",
        f"{base}/series/{series_uid}/metadata",
        f"{base}/series/{series_uid}/instances/{sop}/metadata",
    ):
        r = site.api.client.get(path, headers={"If-None-Match": etag})
        assert r.status_code == 200, path
        (doc,) = r.json()
        assert _value(doc, "00100020") == "B7701", path
        assert _value(doc, "00100010") == "CARTER^JAMES^PAUL", path
        assert _value(doc, "00100030") == "19620417", path
        assert _nhs_items(doc) == [NHS], path
        old = doc["04000561"]["Value"][0]["04000550"]["Value"][0]  # type: ignore[index]
        assert _value(old, "00100020") == "BTMP7701"

    # QIDO-RS and C-FIND rows.
    (row,) = site.qido(StudyInstanceUID=MERGED_CT, includefield="OtherPatientIDsSequence")
    assert (_value(row, "00100020"), _value(row, "00100010")) == ("B7701", "CARTER^JAMES^PAUL")
    assert _nhs_items(row) == [NHS]
    (found,) = site.find(
        "ZZBCT1",
        "QueryRetrieveLevel=STUDY",
        f"StudyInstanceUID={MERGED_CT}",
        "PatientID",
        "IssuerOfPatientID",
        "PatientName",
        "OtherPatientIDsSequence[0].PatientID",
    )
    assert (found.PatientID, found.IssuerOfPatientID) == ("B7701", "ZZB")
    assert str(found.PatientName) == "CARTER^JAMES^PAUL"
    assert [i.PatientID for i in found.OtherPatientIDsSequence] == [NHS]

    # WADO-RS instance: re-encoded with the current identity, old values kept.
    r = site.api.client.get(
        f"{base}/series/{series_uid}/instances/{sop}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert r.status_code == 200
    (part,) = _parts(r.content, r.headers["content-type"])
    got = pydicom.dcmread(io.BytesIO(part))
    assert (got.PatientID, str(got.PatientName)) == ("B7701", "CARTER^JAMES^PAUL")
    assert got.OtherPatientIDsSequence[0].PatientID == NHS
    modified = got.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    assert (modified.PatientID, str(modified.PatientName)) == ("BTMP7701", "UNKNOWN^MALE")
    assert got.PixelData == pydicom.dcmread(stored).PixelData

    # C-GET (getscu): the same.
    out = site.files / "get"
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
            f"StudyInstanceUID={MERGED_CT}",
            "127.0.0.1",
            str(site.server.ports["dicom"]),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (received,) = [pydicom.dcmread(p) for p in out.iterdir()]
    assert received.PatientID == "B7701"
    assert received.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientID == (
        "BTMP7701"
    )
    # The stored blob never changes.
    assert stored.read_bytes() == original


def test_unchanged_identity_sends_the_stored_bytes(site: Site) -> None:
    stored = site.ct(
        "ZZA",
        "unchanged",
        patient_id="A7799",
        issuer="ZZA",
        name="SAME^AS^EVER",
        birth_date="19700101",
        accession="ACC7799",
        study_uid="2.25.7700099",
        study_date="20250101",
    )
    r = site.api.client.get(
        "/dicomweb/studies/2.25.7700099",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert r.status_code == 200
    assert _parts(r.content, r.headers["content-type"]) == [stored.read_bytes()]


def test_demographic_update_shows_in_metadata_and_cfind(site: Site) -> None:
    assert site.send(adt("ZZA", "OUT-3", "A7702", event="A04", name="OLDNAME^ANN")) == ["AA"]
    site.ct(
        "ZZA",
        "updated",
        patient_id="A7702",
        issuer="ZZA",
        name="OLDNAME^ANN",
        birth_date="19620417",
        accession="ACC7702",
        study_uid=UPDATED_CT,
        study_date="20250102",
    )
    assert site.send(adt("ZZA", "OUT-4", "A7702", event="A08", name="NEWNAME^ANN")) == ["AA"]
    (doc,) = site.api.json(f"/dicomweb/studies/{UPDATED_CT}/metadata")
    assert _value(doc, "00100010") == "NEWNAME^ANN"
    (found,) = site.find(
        "ZZAPACSWS", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={UPDATED_CT}", "PatientName"
    )
    assert str(found.PatientName) == "NEWNAME^ANN"


def _study_uids(rows: list[dict[str, dict[str, object]]]) -> set[object]:
    return {_value(r, "0020000D") for r in rows}


def test_qido_follows_a24_links_and_retired_identifiers(site: Site) -> None:
    assert site.send(adt("ZZA", "OUT-5", "A7703"), adt("ZZB", "OUT-6", "B7703")) == ["AA", "AA"]
    for trust, pid, study in (("ZZA", "A7703", LINK_A), ("ZZB", "B7703", LINK_B)):
        site.ct(
            trust,
            f"link-{pid}",
            patient_id=pid,
            issuer=trust,
            name="CARTER^JAMES^PAUL",
            birth_date="19620417",
            accession=f"ACC-{pid}",
            study_uid=study,
            study_date="20240101",
        )
    query = {"PatientID": "A7703", "IssuerOfPatientID": "ZZA"}
    assert _study_uids(site.qido(**query)) == {LINK_A}
    assert site.send(A24.format(control="OUT-7", a="A7703", b="B7703")) == ["AA"]
    rows = site.qido(**query)
    assert _study_uids(rows) == {LINK_A, LINK_B}
    # Both are shown as the caller's trust (ZZA) knows the person (issue 15); the ZZB study's
    # own identifiers are in Other Patient IDs Sequence.
    assert {(_value(r, "0020000D"), _value(r, "00100021")) for r in rows} == {
        (LINK_A, "ZZA"),
        (LINK_B, "ZZA"),
    }
    (linked,) = [r for r in rows if _value(r, "0020000D") == LINK_B]
    others = linked["00101002"]["Value"]  # type: ignore[index]
    assert ("B7703", "ZZB") in {(_value(i, "00100020"), _value(i, "00100021")) for i in others}
    assert site.send(A37.format(control="OUT-8", a="A7703", b="B7703")) == ["AA"]
    assert _study_uids(site.qido(**query)) == {LINK_A}

    # A47 renumbering: the retired ID still finds the patient, under the new ID.
    site.send(adt("ZZA", "OUT-9", "A7704"))
    site.ct(
        "ZZA",
        "renumbered",
        patient_id="A7704",
        issuer="ZZA",
        name="CARTER^JAMES^PAUL",
        birth_date="19620417",
        accession="ACC7704",
        study_uid=RENUMBERED,
        study_date="20240202",
    )
    assert site.send(A47.format(control="OUT-10", new="A7705", old="A7704")) == ["AA"]
    rows = site.qido(PatientID="A7704", IssuerOfPatientID="ZZA")
    assert [(_value(r, "0020000D"), _value(r, "00100020")) for r in rows] == [(RENUMBERED, "A7705")]
    found = site.find(
        "ZZAPACSWS",
        "QueryRetrieveLevel=STUDY",
        "PatientID=A7704",
        "IssuerOfPatientID=ZZA",
        "StudyInstanceUID",
    )
    assert [(d.StudyInstanceUID, d.PatientID) for d in found] == [(RENUMBERED, "A7705")]
    # The merged-away ID of the first test resolves the same way.
    found = site.find(
        "ZZBCT1",
        "QueryRetrieveLevel=STUDY",
        "PatientID=BTMP7701",
        "IssuerOfPatientID=ZZB",
        "StudyInstanceUID",
    )
    assert [(d.StudyInstanceUID, d.PatientID) for d in found] == [(MERGED_CT, "B7701")]


def test_cfind_bad_date_is_a900_with_the_reason(site: Site) -> None:
    out = site.files / "bad-date"
    out.mkdir()
    result = subprocess.run(
        [
            "findscu",
            "-d",
            "-S",
            "-aet",
            "ZZAPACSWS",
            "-aec",
            "SOLENT",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyDate=20201345",
            "127.0.0.1",
            str(site.server.ports["dicom"]),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=120,
    )
    text = result.stdout + result.stderr
    assert "0xa900" in text.lower(), text
    assert "not a valid date" in text, text


def test_worklist_shows_only_the_scanners_trust(site: Site) -> None:
    for trust, pid in (("ZZA", "WA1"), ("ZZB", "WB1")):
        site.server.cli(
            "worklist",
            "add",
            "--patient-id",
            pid,
            "--issuer",
            trust,
            "--accession",
            "SHARED77",
            "--modality",
            "CT",
            "--date",
            "20300105",
        )
    keys = ("PatientID", "IssuerOfPatientID", "AccessionNumber=SHARED77")
    rows = site.find("ZZBCT1", *keys, model="-W")
    assert [(r.PatientID, r.IssuerOfPatientID) for r in rows] == [("WB1", "ZZB")]
    rows = site.find("ZZAPACSWS", *keys, model="-W")
    assert [(r.PatientID, r.IssuerOfPatientID) for r in rows] == [("WA1", "ZZA")]
