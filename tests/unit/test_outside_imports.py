"""R28: studies from outside the consortium (an IEP gateway registered as an outside node, a
PDI disc through `solent import --outside`) are held, seen by no clinician, until an identity
steward of the receiving trust reconciles them to a patient record; then every door serves
them under that record with the identifiers the outside sent in Original Attributes Sequence.
Intake and filing are audited as DICOM Import (110107); rejection removes the copies."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import FileSet
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import evt
from pynetdicom.presentation import build_role
from sqlalchemy import select

from solent.app import Archive, build_archive
from solent.cli import main as solent_main
from solent.index import schema as t
from solent.protocols.dimse import retrieve_scp
from solent.protocols.dimse.listener import DimseListener
from solent.protocols.dimse.net import make_ae
from solent.protocols.http import create_app
from solent.security.auditformats import dicom_xml
from solent.settings import load_settings
from tests.unit.security_fixtures import add_user, cli_env, demo_template, study_of
from tests.unit.stow_support import CT_STORAGE, ct_instance

__all__ = ["demo_template"]

GATEWAY = "IEPGW"  # ZZB's IEP gateway, registered as an outside source
INSIDER = "ZZBPACS"  # an ordinary ZZB node (C-GET)
BOB = ("ZZB", "B7730444")
OUTSIDE_ID, OUTSIDE_ISSUER, OUTSIDE_NAME = "RXH-555123", "RXH", "SMITH^ROBERT"


@dataclass
class Server:
    archive: Archive
    client: TestClient
    port: int
    clinician: dict[str, str]  # ZZB
    steward: dict[str, str]  # ZZB pacs_admin
    other_steward: dict[str, str]  # ZZA pacs_admin


@pytest.fixture(scope="module")
def server(demo_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("outside") / "var"
    shutil.copytree(demo_template, data)
    archive = build_archive(load_settings(environ={}, data_dir=data, dicom_port=0))
    ops = ["store", "query", "retrieve"]
    archive.index.add_node(GATEWAY, "127.0.0.1", 104, "ZZB", ["store"], outside=True)
    archive.index.add_node(INSIDER, "127.0.0.1", 104, "ZZB", ops)
    listener = DimseListener(archive.services)
    port = listener.start()
    try:
        with TestClient(create_app(archive), raise_server_exceptions=False) as client:
            yield Server(
                archive,
                client,
                port,
                add_user(archive, "drzb", "ZZB", "clinician"),
                add_user(archive, "stewardzb", "ZZB", "pacs_admin"),
                add_user(archive, "stewardza", "ZZA", "pacs_admin"),
            )
    finally:
        listener.stop()
        archive.close()


def _outside(study: str, series: str | None = None, sop: str | None = None) -> Dataset:
    """An instance as another organisation's PACS labels it: its MRN, issuer and name."""
    part = ct_instance(OUTSIDE_ID, OUTSIDE_ISSUER, study, series=series, sop=sop)
    ds = dcmread(DicomBytesIO(part))
    ds.PatientName = OUTSIDE_NAME
    return ds


def _c_store(server: Server, calling: str, *datasets: Dataset) -> list[int]:
    ae = make_ae(calling)
    ae.add_requested_context(CT_STORAGE, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="SOLENT")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def _c_get(server: Server, study: str) -> list[Dataset]:
    """C-GET of a study by ZZB's ordinary node: the instances as they go out."""
    ae = make_ae(INSIDER)
    ae.add_requested_context(retrieve_scp.STUDY_ROOT_GET)
    ae.add_requested_context(CT_STORAGE, [ExplicitVRLittleEndian])
    got: list[Dataset] = []

    def on_store(event: Any) -> int:
        got.append(event.dataset)
        return 0

    assoc = ae.associate(
        "127.0.0.1",
        server.port,
        ae_title="SOLENT",
        ext_neg=[build_role(CT_STORAGE, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel, ident.StudyInstanceUID = "STUDY", study
    list(assoc.send_c_get(ident, retrieve_scp.STUDY_ROOT_GET))
    assoc.release()
    return got


def _parts(body: bytes, content_type: str) -> list[bytes]:
    """The bodies of a multipart/related answer (WADO-RS), by its boundary."""
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    out = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        out.append(chunk.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n"))
    return out


def _seen_by_clinician(server: Server, study: str) -> list[dict[str, Any]]:
    r = server.client.get(f"/dicomweb/studies?StudyInstanceUID={study}", headers=server.clinician)
    assert r.status_code in (200, 204), r.text
    return r.json() if r.status_code == 200 else []


def _held(archive: Archive, study: str) -> list[dict[str, Any]]:
    with archive.index.read() as conn:
        q = select(t.held_instance).where(t.held_instance.c.study_uid == study)
        return [dict(r) for r in conn.execute(q).mappings()]


def _filed(archive: Archive, study: str) -> bool:
    with archive.index.read() as conn:
        q = select(t.study.c.pk).where(t.study.c.study_uid == study)
        return conn.execute(q).first() is not None


def _audits(archive: Archive, study: str) -> list[dict[str, Any]]:
    return archive.audit.search(study_uid=study, limit=1000)


def _original(ds: Dataset) -> Dataset:
    return ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0]


def test_outside_node_study_is_hidden_until_reconciled_then_served_under_the_patient(
    server: Server,
) -> None:
    archive, client = server.archive, server.client
    study, series = generate_uid(), generate_uid()
    sent = [_outside(study, series), _outside(study, series)]
    assert _c_store(server, GATEWAY, *sent) == [0, 0]  # answered as stored

    # Held: no clinician, no node, no FHIR sees it; nothing was filed under any record.
    assert _seen_by_clinician(server, study) == []
    assert client.get(f"/api/studies/{study}", headers=server.clinician).status_code == 404
    assert _c_get(server, study) == []
    assert not _filed(archive, study)
    rows = _held(archive, study)
    assert {r["status"] for r in rows} == {"held"} and len(rows) == 2
    assert {(r["patient_id"], r["original_issuer"], r["patient_name"]) for r in rows} == {
        (OUTSIDE_ID, OUTSIDE_ISSUER, OUTSIDE_NAME)
    }
    intake = [a for a in _audits(archive, study) if a["action"] == "import"]
    assert len(intake) == 2 and all(a["actor_name"] == GATEWAY for a in intake)
    assert OUTSIDE_ID in intake[0]["detail"] and '"outcome":"held"' in intake[0]["detail"]
    assert "110107" in dicom_xml(intake[0])  # DICOM "Import"

    # The work list: the receiving trust's steward sees it; another trust's does not.
    assert client.get("/api/identity/imports", headers=server.other_steward).json() == []
    listed = client.get("/api/identity/imports", headers=server.steward)
    assert listed.status_code == 200, listed.text
    (entry,) = [e for e in listed.json() if e["study_uid"] == study]
    assert entry["as_sent"]["patient_id"] == OUTSIDE_ID
    assert entry["as_sent"]["issuer"] == OUTSIDE_ISSUER
    assert entry["as_sent"]["name"] == OUTSIDE_NAME
    assert entry["instances"] == 2 and entry["calling_ae"] == GATEWAY
    to_bob = {"to": {"issuer": BOB[0], "patient_id": BOB[1]}, "reason": "IEP from RXH"}
    other = client.post(
        f"/api/identity/imports/{study}/reconcile", json=to_bob, headers=server.other_steward
    )
    assert other.status_code == 404, other.text
    assert OUTSIDE_ID not in other.text

    done = client.post(
        f"/api/identity/imports/{study}/reconcile", json=to_bob, headers=server.steward
    )
    assert done.status_code == 200, done.text
    assert done.json()["instances"] == 2

    # Now visible under Bob, everywhere, with the outside identifiers kept as originals.
    (found,) = _seen_by_clinician(server, study)
    assert found["00100020"]["Value"] == [BOB[1]]
    wado = client.get(
        f"/dicomweb/studies/{study}/series/{series}/instances/{sent[0].SOPInstanceUID}",
        headers={**server.clinician, "Accept": 'multipart/related; type="application/dicom"'},
    )
    assert wado.status_code == 200, wado.text
    (part,) = _parts(wado.content, wado.headers["content-type"])
    for ds in [dcmread(DicomBytesIO(part)), *_c_get(server, study)]:
        assert (ds.IssuerOfPatientID, ds.PatientID, str(ds.PatientName)) == (*BOB, "DEMO^BOB")
        original = _original(ds)
        assert original.PatientID == OUTSIDE_ID
        assert original.IssuerOfPatientID == OUTSIDE_ISSUER
        assert str(original.PatientName) == OUTSIDE_NAME
    rows = _held(archive, study)
    assert {r["status"] for r in rows} == {"released"}
    assert all(not archive.store.exists(str(r["path"])) for r in rows)
    filed = [a for a in _audits(archive, study) if a["action"] == "import" and a["patient_id"]]
    assert {(a["patient_issuer"], a["patient_id"]) for a in filed} == {BOB}
    assert len(filed) == 2 and all(a["actor_name"] == "stewardzb" for a in filed)
    history = client.get(
        f"/api/identity/history?issuer={BOB[0]}&patient_id={BOB[1]}", headers=server.clinician
    )
    assert history.status_code == 200, history.text
    (event,) = [e for e in history.json() if e["kind"] == "outside-study-reconciled"]
    assert event["before"]["original_patient_id"] == OUTSIDE_ID
    queue = client.get("/api/identity/data-quality?status=resolved", headers=server.steward)
    assert any(study in i["detail"] for i in queue.json())
    # Decided: a second decision finds nothing to decide.
    again = client.post(
        f"/api/identity/imports/{study}/reject", json={"reason": "x"}, headers=server.steward
    )
    assert again.status_code == 404


def _pdi_disc(root: Path, study: str) -> Path:
    """A PDI-style disc: DICOMDIR and its files, as pydicom's File-set writes them."""
    fs = FileSet()
    for n in range(2):
        ds = _outside(study)
        ds.StudyTime, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "101500", "1", 1, n + 1
        fs.add(ds)
    fs.write(root)
    return root / "DICOMDIR"


def test_pdi_import_is_held_and_a_rejection_removes_it(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    archive, client = server.archive, server.client
    study = generate_uid()
    dicomdir = _pdi_disc(tmp_path / "disc", study)
    cli_env(monkeypatch, archive.settings.data_dir)
    code = solent_main(["import", "--outside", "--trust", "ZZB", "--json", str(dicomdir)])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and len(summary["held"]) == 2 and summary["stored"] == []
    assert _seen_by_clinician(server, study) == []
    rows = _held(archive, study)
    assert len(rows) == 2 and all(archive.store.exists(str(r["path"])) for r in rows)

    assert solent_main(["identity", "imports", "--json"]) == 0  # the operator's work list
    (listed,) = [e for e in json.loads(capsys.readouterr().out) if e["study_uid"] == study]
    assert listed["as_sent"]["patient_id"] == OUTSIDE_ID and listed["instances"] == 2
    refused = client.post(
        f"/api/identity/imports/{study}/reject", json={"reason": ""}, headers=server.steward
    )
    assert refused.status_code in (400, 422)
    rejected = client.post(
        f"/api/identity/imports/{study}/reject",
        json={"reason": "wrong patient's disc"},
        headers=server.steward,
    )
    assert rejected.status_code == 200, rejected.text
    rows = _held(archive, study)
    assert {r["status"] for r in rows} == {"discarded"}
    assert all(not archive.store.exists(str(r["path"])) for r in rows)
    assert _seen_by_clinician(server, study) == []
    (deleted,) = [a for a in _audits(archive, study) if a["action"] == "delete"]
    assert "wrong patient's disc" in deleted["detail"]
    listed = client.get("/api/identity/imports?status=discarded", headers=server.steward)
    assert [e["instances"] for e in listed.json() if e["study_uid"] == study] == [2]


def test_reconcile_is_refused_when_the_record_or_the_uids_say_otherwise(
    server: Server, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """To a record that does not exist, or a study UID filed under another person (Alice's
    ZZB study, not linked to Bob): 409, nothing filed, still held. Then the operator's CLI
    files it under Bob."""
    archive, client = server.archive, server.client
    alice_study = study_of(archive, "ZZB", "B7730021")
    study = generate_uid()
    assert _c_store(server, GATEWAY, _outside(study), _outside(alice_study)) == [0, 0]
    for uid, to in (
        (study, {"issuer": "ZZB", "patient_id": "NOBODY-1"}),
        (alice_study, {"issuer": BOB[0], "patient_id": BOB[1]}),
    ):
        r = client.post(
            f"/api/identity/imports/{uid}/reconcile", json={"to": to}, headers=server.steward
        )
        assert r.status_code == 409, r.text
        assert {row["status"] for row in _held(archive, uid) if row["kind"]} == {"held"}
    assert (
        "no patient record NOBODY-1"
        in client.post(
            f"/api/identity/imports/{study}/reconcile",
            json={"to": {"issuer": "ZZB", "patient_id": "NOBODY-1"}},
            headers=server.steward,
        ).text
    )
    assert not _filed(archive, study)
    # A ZZB steward may not file it under another trust's record.
    to_zza = {"to": {"issuer": "ZZA", "patient_id": "A100001"}}
    r = client.post(f"/api/identity/imports/{study}/reconcile", json=to_zza, headers=server.steward)
    assert r.status_code == 403, r.text
    cli_env(monkeypatch, archive.settings.data_dir)
    code = solent_main(["identity", "reconcile-import", study, *BOB, "--by", "steward"])
    assert code == 0 and "1 instance(s) filed" in capsys.readouterr().out
    assert _filed(archive, study)
