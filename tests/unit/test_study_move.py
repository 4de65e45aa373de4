"""R57: a study filed under the wrong patient or order is corrected by identity stewards
through the JSON API: moved to another record (one person within a trust's records, a request
and a second person's approval between two trusts'), its accession corrected, and reversed.
Afterwards every door shows it under the record it now belongs to, outgoing DICOM keeps the
stored values in Original Attributes Sequence, each step is audited naming both records and
announced on the change feed, and images that still name the old record follow the study."""

from __future__ import annotations

import json
import threading
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from solent.app import Archive
from solent.domain.attributes import Level
from solent.domain.matching import parse_query
from solent.domain.principal import Principal, PrincipalKind
from solent.index import schema as t
from tests.unit.security_fixtures import (
    add_user,
    cli_env,
    demo,
    demo_client,
    demo_template,
    study_of,
)
from tests.unit.stow_support import ct_instance, stow_body

__all__ = ["demo", "demo_client", "demo_template"]

PID, ISSUER, ACCESSION = "00100020", "00100021", "00080050"
ORIGINAL_ATTRIBUTES, MODIFIED = "04000561", "04000550"
DICOM = {"Accept": "multipart/related; type=application/dicom"}
UNKNOWN_STUDY = "1.2.826.0.1.3680043.8.498.999999999"


def _qido(client: TestClient, heads: dict[str, str], issuer: str, pid: str) -> list[str]:
    r = client.get(
        "/dicomweb/studies", params={"PatientID": pid, "IssuerOfPatientID": issuer}, headers=heads
    )
    assert r.status_code in (200, 204), r.text
    return [s["0020000D"]["Value"][0] for s in (r.json() if r.status_code == 200 else [])]


def _cfind(archive: Archive, issuer: str, pid: str) -> list[str]:
    """Study UIDs a ZZB node's study-level C-FIND for the record gets (find_scp's call)."""
    node = Principal(PrincipalKind.NODE, "MODZB", "ZZB", frozenset())
    keys = {"PatientID": pid, "IssuerOfPatientID": issuer, "StudyInstanceUID": ""}
    query = parse_query(Level.STUDY, keys, ignore_unknown=True)
    result = archive.services.query.find(
        node, query, limit=None, max_results=100, channel="dimse c-find", keys=keys
    )
    for row in result.rows:
        assert (row["PatientID"], row["IssuerOfPatientID"]) == (pid, issuer)
    return [str(r["StudyInstanceUID"]) for r in result.rows]


def _totals(archive: Archive, study: str) -> tuple[int, int]:
    """(series, instances) the study row says, checked against its series and instances."""
    st, se, ins = t.study.c, t.series.c, t.instance.c
    with archive.index.read() as conn:
        row = conn.execute(
            select(st.pk, st.num_series, st.num_instances, st.size_bytes).where(
                st.study_uid == study
            )
        ).one()
        series = conn.execute(select(se.pk).where(se.study_pk == row.pk)).scalars().all()
        sizes = conn.execute(select(ins.size_bytes).where(ins.series_pk.in_(series))).scalars()
        sizes = list(sizes)
    assert (row.num_series, row.num_instances, row.size_bytes) == (
        len(series),
        len(sizes),
        sum(sizes),
    )
    return int(row.num_series), int(row.num_instances)


def _value(obj: dict[str, Any], tag: str) -> Any:
    return (obj.get(tag, {}).get("Value") or [None])[0]


def _metadata(client: TestClient, heads: dict[str, str], study: str) -> list[dict[str, Any]]:
    r = client.get(f"/dicomweb/studies/{study}/metadata", headers=heads)
    assert r.status_code == 200, r.text
    docs: list[dict[str, Any]] = r.json()
    return docs


def _originals(obj: dict[str, Any]) -> dict[str, Any]:
    """The attributes the last Original Attributes Sequence item kept, by tag."""
    items = obj[ORIGINAL_ATTRIBUTES]["Value"]
    kept: dict[str, Any] = items[-1][MODIFIED]["Value"][0]
    return kept


def _corrected(obj: dict[str, Any]) -> set[str]:
    """Tags of every attribute Original Attributes Sequence keeps a stored value of."""
    items = obj.get(ORIGINAL_ATTRIBUTES, {}).get("Value", [])
    return {tag for item in items for kept in item[MODIFIED]["Value"] for tag in kept}


def _first_instance(client: TestClient, heads: dict[str, str], study: str) -> pydicom.Dataset:
    r = client.get(f"/dicomweb/studies/{study}", headers={**heads, **DICOM})
    assert r.status_code == 200, r.text
    boundary = r.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    part = r.content.split(f"--{boundary}".encode())[1]
    return pydicom.dcmread(BytesIO(part.split(b"\r\n\r\n", 1)[1]))


def _feed(archive: Archive, study: str) -> list[str]:
    with archive.index.read() as conn:
        c = t.change_feed.c
        rows = conn.execute(
            select(c.kind)
            .where(c.study_uid == study, c.kind.like("%.%"), c.kind.notlike("instance.%"))
            .order_by(c.seq)
        )
        return [str(k) for k in rows.scalars()]


def _patient_of(archive: Archive, study: str) -> tuple[str, str]:
    with archive.index.read() as conn:
        row = conn.execute(
            select(t.patient.c.issuer, t.patient.c.local_id)
            .join(t.study, t.study.c.patient_pk == t.patient.c.pk)
            .where(t.study.c.study_uid == study)
        ).one()
    return str(row[0]), str(row[1])


def _stow(client: TestClient, heads: dict[str, str], *parts: bytes) -> int:
    body, content_type = stow_body(*parts)
    r = client.post("/dicomweb/studies", content=body, headers={**heads, **content_type})
    return r.status_code


def _move(client: TestClient, heads: dict[str, str], study: str, issuer: str, pid: str) -> Any:
    body = {"to": {"issuer": issuer, "patient_id": pid}, "reason": "filed under the wrong patient"}
    return client.post(f"/api/identity/studies/{study}/move", json=body, headers=heads)


def test_a_move_within_a_trust_refiles_the_study_everywhere_and_is_reversible(
    demo: Archive, demo_client: TestClient
) -> None:
    bob_study = study_of(demo, "ZZB", "B7730444")
    admin = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    reader = add_user(demo, "drzb", "ZZB", "clinician")
    assert bob_study in _qido(demo_client, reader, "ZZB", "B7730444")
    assert bob_study not in _qido(demo_client, reader, "ZZB", "B7730021")

    moved = _move(demo_client, admin, bob_study, "ZZB", "B7730021")
    assert moved.status_code == 200, moved.text
    edit = moved.json()
    assert edit["status"] == "done" and not edit["needs_second_person"]
    assert edit["from"] == {"issuer": "ZZB", "patient_id": "B7730444"}
    assert edit["to"] == {"issuer": "ZZB", "patient_id": "B7730021"}
    assert edit["decided_by"] == "user:adminzb@ZZB"
    assert _patient_of(demo, bob_study) == ("ZZB", "B7730021")

    # QIDO: under Alice's record now, no longer under Bob's.
    assert bob_study in _qido(demo_client, reader, "ZZB", "B7730021")
    assert bob_study not in _qido(demo_client, reader, "ZZB", "B7730444")
    # WADO-RS metadata and instances: Alice's identity, Bob's in Original Attributes.
    for obj in _metadata(demo_client, reader, bob_study):
        assert (_value(obj, PID), _value(obj, ISSUER)) == ("B7730021", "ZZB")
        assert _value(_originals(obj), PID) == "B7730444"
    ds = _first_instance(demo_client, reader, bob_study)
    assert (ds.PatientID, ds.IssuerOfPatientID) == ("B7730021", "ZZB")
    assert ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0].PatientID == "B7730444"
    assert ds.OriginalAttributesSequence[-1].ReasonForTheAttributeModification == "CORRECT"
    # C-FIND (the query service, as a ZZB node asks it): the same answer as QIDO.
    assert bob_study in _cfind(demo, "ZZB", "B7730021")
    assert bob_study not in _cfind(demo, "ZZB", "B7730444")
    # The viewer timeline and FHIR ImagingStudy follow too.
    bob_tl = demo_client.get("/api/viewer/patients/ZZB/B7730444/timeline", headers=reader)
    assert bob_study not in bob_tl.text
    alice_tl = demo_client.get("/api/viewer/patients/ZZB/B7730021/timeline", headers=reader)
    assert bob_study in alice_tl.text
    fhir = demo_client.get(
        "/fhir/ImagingStudy", params={"identifier": f"urn:oid:{bob_study}"}, headers=reader
    )
    assert fhir.status_code == 200, fhir.text
    (entry,) = fhir.json()["entry"]
    assert entry["resource"]["subject"]["identifier"]["value"] == "B7730021"

    # Audited under both records, each naming both; announced on the change feed; in the
    # identity history of both records.
    audits = [a for a in demo.audit.search(actor_name="adminzb", limit=100) if a["study_uid"]]
    assert sorted(a["patient_id"] for a in audits) == ["B7730021", "B7730444"]
    for a in audits:
        assert "B7730444" in a["detail"] and "B7730021" in a["detail"]
        assert "study moved" in a["detail"] and a["action"] == "patient-record"
    assert _feed(demo, bob_study) == ["study.moved"]
    history = demo_client.get(
        "/api/identity/history", params={"issuer": "ZZB", "patient_id": "B7730444"}, headers=reader
    ).json()
    (event,) = [e for e in history if e["kind"] == "study-moved"]
    assert event["after"]["study_edit"] == edit["id"]
    wrong_door = demo_client.post(f"/api/identity/events/{event['pk']}/reverse", headers=admin)
    assert wrong_door.status_code == 409
    assert f"/api/identity/study-edits/{edit['id']}/reverse" in wrong_door.text

    # Reversed: back under Bob, outgoing headers as stored again, recorded as a new edit.
    back = demo_client.post(
        f"/api/identity/study-edits/{edit['id']}/reverse",
        json={"reason": "it was Bob's after all"},
        headers=admin,
    )
    assert back.status_code == 200, back.text
    assert back.json()["reverses"] == edit["id"] and back.json()["status"] == "done"
    assert _patient_of(demo, bob_study) == ("ZZB", "B7730444")
    assert bob_study in _qido(demo_client, reader, "ZZB", "B7730444")
    assert bob_study not in _qido(demo_client, reader, "ZZB", "B7730021")
    for obj in _metadata(demo_client, reader, bob_study):
        assert _value(obj, PID) == "B7730444" and ORIGINAL_ATTRIBUTES not in obj
    edits = demo_client.get(f"/api/identity/studies/{bob_study}/edits", headers=admin).json()
    assert [(e["id"], e["reversed_by"]) for e in edits] == [
        (edit["id"], back.json()["id"]),
        (back.json()["id"], None),
    ]
    again = demo_client.post(
        f"/api/identity/study-edits/{edit['id']}/reverse", json={"reason": "x"}, headers=admin
    )
    assert again.status_code == 409 and "reversed already" in again.text
    assert _feed(demo, bob_study) == ["study.moved", "study.moved"]


def test_a_move_between_trusts_waits_for_a_second_different_person(
    demo: Archive, demo_client: TestClient
) -> None:
    bob_study = study_of(demo, "ZZB", "B7730444")
    asker = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    approver = add_user(demo, "adminzc", "ZZC", "pacs_admin")
    reader = add_user(demo, "drzb", "ZZB", "clinician")

    asked = _move(demo_client, asker, bob_study, "ZZC", "C-55501")
    assert asked.status_code == 200, asked.text
    edit = asked.json()
    assert edit["status"] == "requested" and edit["needs_second_person"]
    # Nothing moved yet.
    assert _patient_of(demo, bob_study) == ("ZZB", "B7730444")
    assert bob_study in _qido(demo_client, reader, "ZZB", "B7730444")
    assert _feed(demo, bob_study) == ["study.move-requested"]
    # Listed for the other side to approve.
    waiting = demo_client.get("/api/identity/study-edits", headers=approver).json()
    assert [e["id"] for e in waiting] == [edit["id"]]
    # A second move of the same study waits for this one.
    second = _move(demo_client, asker, bob_study, "ZZB", "B7730021")
    assert second.status_code == 409 and "waiting for approval" in second.text

    # The requester cannot approve their own request: refused, audited, nothing changes.
    n = len(demo.audit.search(actor_name="adminzb", limit=100))
    own = demo_client.post(f"/api/identity/study-edits/{edit['id']}/approve", headers=asker)
    assert own.status_code == 409 and "second person" in own.text, own.text
    assert _patient_of(demo, bob_study) == ("ZZB", "B7730444")
    refusals = demo.audit.search(actor_name="adminzb", limit=100)[n:]
    assert refusals and all(a["outcome"] != "success" for a in refusals)

    approved = demo_client.post(f"/api/identity/study-edits/{edit['id']}/approve", headers=approver)
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "done"
    assert approved.json()["decided_by"] == "user:adminzc@ZZC"
    assert _patient_of(demo, bob_study) == ("ZZC", "C-55501")
    assert _feed(demo, bob_study) == ["study.move-requested", "study.moved"]
    # A ZZB clinician may see the study still (it was made at ZZB); it shows Carol's record.
    for obj in _metadata(demo_client, reader, bob_study):
        assert (_value(obj, PID), _value(obj, ISSUER)) == ("C-55501", "ZZC")
        assert _value(_originals(obj), PID) == "B7730444"
    # Approved once: again is refused.
    twice = demo_client.post(f"/api/identity/study-edits/{edit['id']}/approve", headers=approver)
    assert twice.status_code == 409 and "done by user:adminzc@ZZC" in twice.text

    # Moving back across trusts needs a second person again.
    back = demo_client.post(
        f"/api/identity/study-edits/{edit['id']}/reverse",
        json={"reason": "wrong Carol"},
        headers=approver,
    )
    assert back.status_code == 200 and back.json()["status"] == "requested", back.text
    assert _patient_of(demo, bob_study) == ("ZZC", "C-55501")
    done = demo_client.post(f"/api/identity/study-edits/{back.json()['id']}/approve", headers=asker)
    assert done.status_code == 200, done.text
    assert _patient_of(demo, bob_study) == ("ZZB", "B7730444")


def test_only_the_holders_stewards_ask_and_others_get_what_an_unknown_study_gets(
    demo: Archive, demo_client: TestClient
) -> None:
    bob_study = study_of(demo, "ZZB", "B7730444")
    outsider = add_user(demo, "adminzd", "ZZD", "pacs_admin")
    for target in (("ZZB", "B7730021"), ("ZZA", "A100001")):
        hidden = _move(demo_client, outsider, bob_study, *target)
        missing = _move(demo_client, outsider, UNKNOWN_STUDY, *target)
        assert hidden.status_code == missing.status_code == 404, hidden.text
        assert hidden.text == missing.text.replace(UNKNOWN_STUDY, bob_study)
        assert "B7730444" not in hidden.text
    # The target record's steward cannot ask either: the answer would say whose record holds
    # the study. Only the holder's stewards ask; the other side approves.
    target_side = add_user(demo, "adminzc", "ZZC", "pacs_admin")
    hidden = _move(demo_client, target_side, bob_study, "ZZC", "C-55501")
    missing = _move(demo_client, target_side, UNKNOWN_STUDY, "ZZC", "C-55501")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.text == missing.text.replace(UNKNOWN_STUDY, bob_study)
    hidden = demo_client.get(f"/api/identity/studies/{bob_study}/edits", headers=outsider)
    assert hidden.status_code == 404
    acc = {"accession_number": "X1", "reason": "r"}
    hidden = demo_client.post(
        f"/api/identity/studies/{bob_study}/accession", json=acc, headers=outsider
    )
    assert hidden.status_code == 404
    # A requested move is invisible to an administrator of neither trust.
    asker = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    edit = _move(demo_client, asker, bob_study, "ZZC", "C-55501").json()
    approve = demo_client.post(f"/api/identity/study-edits/{edit['id']}/approve", headers=outsider)
    unknown = demo_client.post("/api/identity/study-edits/987654/approve", headers=outsider)
    assert approve.status_code == unknown.status_code == 404
    assert approve.text == unknown.text.replace("987654", str(edit["id"]))
    assert demo_client.get("/api/identity/study-edits", headers=outsider).json() == []

    # Roles that read patient data do not correct identity: refused by role, whatever study.
    clinician = add_user(demo, "drzb", "ZZB", "clinician")
    refused = _move(demo_client, clinician, bob_study, "ZZB", "B7730021")
    unknown_refused = _move(demo_client, clinician, UNKNOWN_STUDY, "ZZB", "B7730021")
    assert refused.status_code == unknown_refused.status_code == 403
    assert refused.text == unknown_refused.text
    assert _patient_of(demo, bob_study) == ("ZZB", "B7730444")


def test_instances_that_still_name_the_old_record_follow_the_moved_study(
    demo: Archive, demo_client: TestClient
) -> None:
    bob_study = study_of(demo, "ZZB", "B7730444")
    admin = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    sender = add_user(demo, "modzb", "ZZB", "integration")
    reader = add_user(demo, "drzb", "ZZB", "clinician")
    with demo.index.read() as conn:
        series = (
            conn.execute(
                select(t.series.c.series_uid)
                .join(t.study, t.study.c.pk == t.series.c.study_pk)
                .where(t.study.c.study_uid == bob_study)
            )
            .scalars()
            .first()
        )
    before = len(_metadata(demo_client, reader, bob_study))

    # The modality keeps sending Bob's ID while a person moves the study: every instance is
    # stored (none refused or held) and filed under the record the study is under.
    parts = [
        ct_instance("B7730444", "ZZB", bob_study, series=series if i % 2 else None, name="DEMO^BOB")
        for i in range(6)
    ]
    codes: list[int] = []

    def send(part: bytes) -> None:
        codes.append(_stow(demo_client, sender, part))

    threads = [threading.Thread(target=send, args=(p,)) for p in parts[:3]]
    for th in threads:
        th.start()
    assert _move(demo_client, admin, bob_study, "ZZB", "B7730021").status_code == 200
    for th in threads:
        th.join()
    for part in parts[3:]:  # after the move
        send(part)
    assert codes == [200] * 6
    assert _patient_of(demo, bob_study) == ("ZZB", "B7730021")
    docs = _metadata(demo_client, reader, bob_study)
    assert len(docs) == before + 6
    assert {(_value(d, PID), _value(d, ISSUER)) for d in docs} == {("B7730021", "ZZB")}
    assert bob_study not in _qido(demo_client, reader, "ZZB", "B7730444")
    with demo.index.read() as conn:
        held = conn.execute(select(t.held_instance.c.pk)).all()
    assert held == []

    # A study that was never moved still refuses an instance naming another record.
    other = next(s for s in _qido(demo_client, reader, "ZZB", "B7730021") if s != bob_study)
    assert _stow(demo_client, sender, ct_instance("B7730444", "ZZB", other)) != 200


def test_an_accession_correction_relinks_the_order_and_keeps_the_stored_value(
    demo: Archive, demo_client: TestClient
) -> None:
    bob_study = study_of(demo, "ZZB", "B7730444")
    admin = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    reader = add_user(demo, "drzb", "ZZB", "clinician")
    stored = {_value(d, ACCESSION) for d in _metadata(demo_client, reader, bob_study)}
    (old,) = stored

    body = {"accession_number": "ZZB99FIX", "reason": "the RIS booked it under another order"}
    r = demo_client.post(f"/api/identity/studies/{bob_study}/accession", json=body, headers=admin)
    assert r.status_code == 200, r.text
    edit = r.json()
    assert edit["status"] == "done"
    assert edit["accession"]["after"] == {"accession_number": "ZZB99FIX", "issuer": "ZZB"}

    found = demo_client.get(
        "/dicomweb/studies", params={"AccessionNumber": "ZZB99FIX"}, headers=reader
    )
    assert found.status_code == 200 and bob_study in found.text
    for obj in _metadata(demo_client, reader, bob_study):
        assert _value(obj, ACCESSION) == "ZZB99FIX"
        assert _value(obj, PID) == "B7730444"
        assert _value(_originals(obj), ACCESSION) == old
    ds = _first_instance(demo_client, reader, bob_study)
    assert ds.AccessionNumber == "ZZB99FIX"
    assert ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0].AccessionNumber == old
    assert _feed(demo, bob_study) == ["study.accession-corrected"]
    audits = [a for a in demo.audit.search(actor_name="adminzb", limit=100) if a["study_uid"]]
    assert [a["action"] for a in audits] == ["order-record"]
    assert "ZZB99FIX" in audits[0]["detail"] and str(old) in audits[0]["detail"]

    # The same accession again, or one another stored study carries: refused, nothing changes.
    again = demo_client.post(
        f"/api/identity/studies/{bob_study}/accession", json=body, headers=admin
    )
    assert again.status_code == 409
    back = demo_client.post(
        f"/api/identity/study-edits/{edit['id']}/reverse", json={"reason": "undo"}, headers=admin
    )
    assert back.status_code == 200, back.text
    for obj in _metadata(demo_client, reader, bob_study):
        assert _value(obj, ACCESSION) == old and ORIGINAL_ATTRIBUTES not in obj


def test_the_cli_moves_and_the_second_person_rule_holds_there_too(
    demo: Archive,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from solent.cli import main

    cli_env(monkeypatch, tmp_path / "demo-var")
    bob_study = study_of(demo, "ZZB", "B7730444")
    move = ["identity", "move-study", bob_study, "ZZC", "C-55501", "--reason", "wrong patient"]
    assert main([*move, "--by", "alice"]) == 0
    assert "requested" in capsys.readouterr().out
    assert main(["identity", "study-edits", "--json"]) == 0
    (edit,) = json.loads(capsys.readouterr().out)
    assert main(["identity", "approve-edit", str(edit["id"]), "--by", "alice"]) == 1
    assert "second person" in capsys.readouterr().err
    assert _patient_of(demo, bob_study) == ("ZZB", "B7730444")
    assert main(["identity", "approve-edit", str(edit["id"]), "--by", "bob"]) == 0
    assert "done" in capsys.readouterr().out
    assert _patient_of(demo, bob_study) == ("ZZC", "C-55501")


def test_a_series_moves_into_a_study_of_its_own_under_the_other_record_and_back(
    demo: Archive, demo_client: TestClient
) -> None:
    admin = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    sender = add_user(demo, "modzb", "ZZB", "integration")
    reader = add_user(demo, "drzb", "ZZB", "clinician")
    study, kept, wrong = generate_uid(), generate_uid(), generate_uid()
    parts = [ct_instance("B7730444", "ZZB", study, series=kept, name="DEMO^BOB") for _ in range(2)]
    parts.append(ct_instance("B7730444", "ZZB", study, series=wrong, name="DEMO^BOB"))
    assert _stow(demo_client, sender, *parts) == 200

    url = f"/api/identity/studies/{study}/series/{wrong}/move"
    body = {"to": {"issuer": "ZZB", "patient_id": "B7730021"}, "reason": "Alice's series"}
    r = demo_client.post(url, json=body, headers=admin)
    assert r.status_code == 200, r.text
    edit = r.json()
    new = edit["to_study_uid"]
    assert edit["status"] == "done" and edit["series_uid"] == wrong and new != study
    assert _patient_of(demo, study) == ("ZZB", "B7730444")
    assert _patient_of(demo, new) == ("ZZB", "B7730021")
    assert new in _qido(demo_client, reader, "ZZB", "B7730021")
    assert new not in _qido(demo_client, reader, "ZZB", "B7730444")
    left = demo_client.get(f"/dicomweb/studies/{study}/series", headers=reader).json()
    assert [s["0020000E"]["Value"][0] for s in left] == [kept]
    (obj,) = _metadata(demo_client, reader, new)
    assert (_value(obj, PID), _value(obj, "0020000D")) == ("B7730021", new)
    kept_values = _originals(obj)
    assert (_value(kept_values, PID), _value(kept_values, "0020000D")) == ("B7730444", study)
    ds = _first_instance(demo_client, reader, new)
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID) == (new, wrong, "B7730021")
    for obj in _metadata(demo_client, reader, study):  # the series that stayed: Bob's still
        assert (_value(obj, PID), _value(obj, "0020000D")) == ("B7730444", study)
        assert not _corrected(obj) & {PID, "0020000D"}
    assert "series.moved" in _feed(demo, study)

    assert _totals(demo, study) == (1, 2) and _totals(demo, new) == (1, 1)
    # The rest of the moved series, still naming Bob and the old study, follows it.
    late = ct_instance("B7730444", "ZZB", study, series=wrong, name="DEMO^BOB")
    assert _stow(demo_client, sender, late) == 200
    assert len(_metadata(demo_client, reader, new)) == 2
    assert len(_metadata(demo_client, reader, study)) == 2

    # The only series of a study is moved by moving the study.
    only = {**body, "to": {"issuer": "ZZC", "patient_id": "C-55501"}}
    r = demo_client.post(
        f"/api/identity/studies/{new}/series/{wrong}/move", json=only, headers=admin
    )
    assert r.status_code == 409 and "only series" in r.text

    back = demo_client.post(
        f"/api/identity/study-edits/{edit['id']}/reverse", json={"reason": "Bob's"}, headers=admin
    )
    assert back.status_code == 200, back.text
    assert back.json()["status"] == "done"
    assert new not in _qido(demo_client, reader, "ZZB", "B7730021")
    assert demo_client.get(f"/dicomweb/studies/{new}/metadata", headers=reader).status_code == 404
    docs = _metadata(demo_client, reader, study)
    assert len(docs) == 4 and _totals(demo, study) == (2, 4)
    assert {(_value(d, PID), _value(d, "0020000D")) for d in docs} == {("B7730444", study)}
    # (Bob's record corrects the test images' birth date and sex; nothing else.)
    assert set().union(*(_corrected(d) for d in docs)) <= {"00100030", "00100040"}
