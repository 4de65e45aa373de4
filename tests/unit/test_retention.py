"""Records retention (R43, R44) through the HTTP API: an IOCM note titled 113039 "Data Retention
Policy Expired" withdraws nothing by itself. It is stored, the sender is told (STOW-RS 202 with
a Warning Reason), and it waits as a retention deletion until a second person, a records
manager of the record's trust who did not send it, approves it (then the instances are
withdrawn, kept as destruction records) or refuses it. While a legal hold covers the study
(placed on the study, the patient record, or the person's NHS number; several at once are a
cohort) the note is refused and no approval withdraws anything. Records managers read no
patient data; administrators may not be records managers; other titles act as before."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from solent.app import Archive
from solent.domain import nhs_number
from solent.index import schema as t
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template
from tests.unit.stow_support import ct_instance, rejection_note, stow_body

__all__ = ["demo", "demo_client", "demo_template"]

EXPIRED = {"code": "113039", "meaning": "Data Retention Policy Expired"}
WARNING_REASON, ERROR_COMMENT, REFERENCED_SOPS = "00081196", "00000902", "00081199"


def stow(client: TestClient, headers: dict[str, str], *parts: bytes) -> Any:
    body, content_type = stow_body(*parts)
    return client.post("/dicomweb/studies", content=body, headers={**headers, **content_type})


def series_of(client: TestClient, headers: dict[str, str], study: str) -> dict[str, int]:
    r = client.get(f"/dicomweb/studies/{study}/series", headers=headers)
    if r.status_code == 204:
        return {}
    assert r.status_code == 200, r.text
    return {s["0020000E"]["Value"][0]: s["00201209"]["Value"][0] for s in r.json()}


def warned(response: Any) -> str:
    """The one stored part's Warning Reason comment (asserting the 202 and header)."""
    assert response.status_code == 202, response.text
    assert response.headers["Warning"].startswith('299 solent "'), response.headers
    (item,) = response.json()[REFERENCED_SOPS]["Value"]
    assert item[WARNING_REASON]["Value"] == [0xB000]
    return str(item[ERROR_COMMENT]["Value"][0])


def audit_rows(archive: Archive, study: str, action: str = "delete") -> list[dict[str, Any]]:
    with archive.index.read() as conn:
        rows = conn.execute(select(t.audit_log).order_by(t.audit_log.c.seq)).mappings().all()
    return [
        {**r, "detail": json.loads(r["detail"] or "{}")}
        for r in rows
        if r["action"] == action and r["study_uid"] == study
    ]


def a_study(
    client: TestClient, sender: dict[str, str], patient: str, n: int = 3, nhs: str | None = None
) -> tuple[str, str, list[str]]:
    study, series = generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(n)]
    parts = [ct_instance(patient, "ZZA", study, series=series, sop=s, nhs=nhs) for s in sops]
    assert stow(client, sender, *parts).status_code == 200
    return study, series, sops


def test_a_retention_note_waits_for_a_second_person(demo: Archive, demo_client: TestClient) -> None:
    c = demo_client
    sender = add_user(demo, "rad.ret", "ZZA", "clinician")
    reader = add_user(demo, "dr.ret", "ZZA", "radiologist")
    manager = add_user(demo, "rm.one", "ZZA", "records_manager")
    elsewhere = add_user(demo, "rm.zzc", "ZZC", "records_manager")
    admin = add_user(demo, "admin.ret", "ZZA", "pacs_admin")
    study, series, sops = a_study(c, sender, "R1001")

    note, note_uid = rejection_note("R1001", "ZZA", study, {series: sops[:2]}, **EXPIRED)
    comment = warned(stow(c, sender, note))
    assert "awaits approval; nothing withdrawn" in comment[:64]  # a C-STORE Error Comment
    assert series_of(c, reader, study)[series] == 3  # nothing withdrawn yet
    (asked,) = audit_rows(demo, study)
    assert asked["outcome"] == "success" and asked["detail"]["rejected"] == {}
    deletion = asked["detail"]["pending_approval"]

    # Only records managers of the record's trust see it; nobody else may decide it.
    (shown,) = c.get("/api/retention-deletions", headers=manager).json()
    assert (shown["id"], shown["status"], shown["instances"]) == (deletion, "pending", 2)
    assert shown["note_uid"] == note_uid and shown["series"] == {series: sops[:2]}
    assert shown["requested_by"] == "user:rad.ret@ZZA"
    assert c.get("/api/retention-deletions", headers=elsewhere).json() == []
    url = f"/api/retention-deletions/{deletion}"
    assert c.post(f"{url}/approve", headers=elsewhere).status_code == 404
    for other in (sender, reader, admin):
        assert c.get("/api/retention-deletions", headers=other).status_code == 403
        assert c.post(f"{url}/approve", headers=other).status_code == 403
    assert series_of(c, reader, study)[series] == 3

    approved = c.post(f"{url}/approve", headers=manager, json={"reason": "RM-2026-14"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"
    assert approved.json()["outcome"]["rejected"] == {series: sops[:2]}
    assert series_of(c, reader, study)[series] == 1
    for sop in sops[:2]:
        path = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        assert c.get(path, headers=reader).status_code == 404
    # The destruction record: a stub naming each instance, the note, both people; blob kept.
    with demo.index.read() as conn:
        kept = conn.execute(select(t.rejected_instance)).mappings().all()
    assert sorted(r["sop_uid"] for r in kept) == sorted(sops[:2])
    assert {(r["code"], r["note_uid"], r["rejected_by"]) for r in kept} == {
        ("113039", note_uid, "user:rad.ret@ZZA; approved by user:rm.one@ZZA")
    }
    assert all(demo.store.exists(str(r["blob_key"])) for r in kept)
    # Downstream (Instance Availability Notification) learns of it from the change feed.
    with demo.index.read() as conn:
        feed = conn.execute(
            select(t.change_feed.c.sop_instance_uid).where(
                t.change_feed.c.kind == "instance.rejected", t.change_feed.c.study_uid == study
            )
        ).all()
    assert sorted(r[0] for r in feed) == sorted(sops[:2])
    done = audit_rows(demo, study)[-1]
    assert done["actor_name"] == "rm.one" and done["detail"]["retention_deletion"] == deletion
    assert done["detail"]["rejected"] == {series: sops[:2]} and done["patient_id"] == "R1001"
    # Decided once.
    assert c.post(f"{url}/approve", headers=manager).status_code == 409
    assert c.post(f"{url}/refuse", headers=manager, json={"reason": "late"}).status_code == 409


def test_the_requester_cannot_approve_and_a_refusal_withdraws_nothing(
    demo: Archive, demo_client: TestClient
) -> None:
    c = demo_client
    both = add_user(demo, "rad.rm", "ZZA", "clinician", "records_manager")
    second = add_user(demo, "rm.two", "ZZA", "records_manager")
    reader = add_user(demo, "dr.two", "ZZA", "radiologist")
    study, series, sops = a_study(c, both, "R2001", n=2)
    note, _ = rejection_note("R2001", "ZZA", study, {series: sops}, **EXPIRED)
    warned(stow(c, both, note))
    (pending,) = c.get("/api/retention-deletions", headers=second).json()
    url = f"/api/retention-deletions/{pending['id']}"

    mine = c.post(f"{url}/approve", headers=both)
    assert mine.status_code == 403 and "cannot also approve" in mine.text
    assert series_of(c, reader, study)[series] == 2
    assert audit_rows(demo, study)[-1]["outcome"] == "denied"

    assert c.post(f"{url}/refuse", headers=second, json={}).status_code == 400  # reason needed
    refused = c.post(f"{url}/refuse", headers=second, json={"reason": "still in treatment"})
    assert refused.status_code == 200 and refused.json()["status"] == "refused"
    assert series_of(c, reader, study)[series] == 2
    assert c.post(f"{url}/approve", headers=both).status_code == 409
    assert c.post(f"{url}/approve", headers=second).status_code == 409
    assert series_of(c, reader, study)[series] == 2
    assert (
        c.get("/api/retention-deletions?status=refused", headers=second).json()[0]["id"]
        == (pending["id"])
    )
    with demo.index.read() as conn:
        assert conn.execute(select(t.rejected_instance)).first() is None


def test_a_legal_hold_stops_retention_deletion_and_nothing_else(
    demo: Archive, demo_client: TestClient
) -> None:
    c = demo_client
    sender = add_user(demo, "rad.hold", "ZZA", "clinician")
    reader = add_user(demo, "dr.hold", "ZZA", "radiologist")
    manager = add_user(demo, "rm.hold", "ZZA", "records_manager")
    second = add_user(demo, "rm.hold2", "ZZA", "records_manager")
    admin = add_user(demo, "admin.hold", "ZZA", "pacs_admin")
    study, series, sops = a_study(c, sender, "R3001")
    hold = {"reason": "Statutory inquiry", "reference": "INQ-7", "targets": [{"study_uid": study}]}

    for other in (sender, reader, admin):
        assert c.post("/api/legal-holds", json=hold, headers=other).status_code == 403
    placed = c.post("/api/legal-holds", json=hold, headers=manager)
    assert placed.status_code == 201, placed.text
    (held,) = placed.json()
    assert (held["kind"], held["study_uid"], held["active"]) == ("study", study, True)
    assert audit_rows(demo, study, "patient-record")[-1]["detail"]["reference"] == "INQ-7"

    # A retention note for the held study: stored, refused, audited, the sender told.
    note, note_uid = rejection_note("R3001", "ZZA", study, {series: sops[:1]}, **EXPIRED)
    assert "legal hold" in warned(stow(c, sender, note))
    assert series_of(c, reader, study)[series] == 3
    refused = audit_rows(demo, study)[-1]
    assert refused["outcome"] == "denied" and refused["detail"]["note"] == note_uid
    assert refused["detail"]["legal_hold"] == [{"id": held["id"], "reference": "INQ-7"}]
    assert c.get("/api/retention-deletions", headers=manager).json() == []

    # A correction (113038) of the same held study acts at once, as before.
    wrong, _ = rejection_note("R3001", "ZZA", study, {series: sops[2:]})
    assert stow(c, sender, wrong).status_code == 200
    assert series_of(c, reader, study)[series] == 2

    # Lifted (audited, with a reason); a new retention note then waits for approval.
    url = f"/api/legal-holds/{held['id']}/lift"
    assert c.post(url, headers=sender, json={"reason": "inquiry closed"}).status_code == 403
    lifted = c.post(url, headers=second, json={"reason": "inquiry closed"})
    assert lifted.status_code == 200 and lifted.json()["active"] is False
    assert c.post(url, headers=second, json={"reason": "again"}).status_code == 409
    assert c.get("/api/legal-holds", headers=manager).json() == []
    assert c.get("/api/legal-holds?active=false", headers=manager).json()[0]["lifted_by"] == (
        "user:rm.hold2@ZZA"
    )
    # Another trust's records managers neither see nor lift this trust's holds. A hold they
    # place on this trust's records (their inquiry) is seen by both and lifted by them only;
    # one on their own records is not seen here at all.
    other = add_user(demo, "rm.hold.zzc", "ZZC", "records_manager")
    assert c.get("/api/legal-holds?active=false", headers=other).json() == []
    (theirs,) = c.post("/api/legal-holds", json=hold, headers=other).json()
    own = {**hold, "targets": [{"issuer": "ZZC", "patient_id": "C0001"}]}
    (private,) = c.post("/api/legal-holds", json=own, headers=other).json()
    assert [h["id"] for h in c.get("/api/legal-holds", headers=manager).json()] == [theirs["id"]]
    lift = {"reason": "not ours to lift"}
    for hold_id, status in ((theirs["id"], 403), (private["id"], 404)):
        r = c.post(f"/api/legal-holds/{hold_id}/lift", headers=manager, json=lift)
        assert r.status_code == status, r.text
    r = c.post(f"/api/legal-holds/{theirs['id']}/lift", headers=other, json=lift)
    assert r.status_code == 200, r.text
    again, _ = rejection_note("R3001", "ZZA", study, {series: sops[:1]}, **EXPIRED)
    assert "awaits approval" in warned(stow(c, sender, again))


def test_a_hold_placed_while_a_deletion_waits_stops_its_approval(
    demo: Archive, demo_client: TestClient
) -> None:
    """Patient-level and NHS-number (every trust's records) holds, placed together (a cohort),
    after the deletion was asked for: approval is refused and it stays pending."""
    c = demo_client
    sender = add_user(demo, "rad.coh", "ZZA", "clinician")
    reader = add_user(demo, "dr.coh", "ZZA", "radiologist")
    manager = add_user(demo, "rm.coh", "ZZA", "records_manager")
    nhs = nhs_number.complete("999000777")
    assert nhs is not None
    first, s1, sops1 = a_study(c, sender, "R4001")
    other, s2, sops2 = a_study(c, sender, "R4002", nhs=nhs)
    for study, series, sops, pid in ((first, s1, sops1, "R4001"), (other, s2, sops2, "R4002")):
        note, _ = rejection_note(pid, "ZZA", study, {series: sops}, **EXPIRED)
        warned(stow(c, sender, note))
    pending = {d["study_uid"]: d["id"] for d in c.get("/api/retention-deletions", headers=manager)
               .json()}  # fmt: skip
    assert set(pending) == {first, other}

    cohort = {
        "reason": "Litigation",
        "reference": "CLAIM-42",
        "targets": [{"issuer": "ZZA", "patient_id": "R4001"}, {"nhs_number": nhs}],
    }
    placed = c.post("/api/legal-holds", json=cohort, headers=manager)
    assert placed.status_code == 201, placed.text
    assert [(h["kind"], h["reference"]) for h in placed.json()] == [
        ("patient", "CLAIM-42"),
        ("nhs", "CLAIM-42"),
    ]
    approver = add_user(demo, "rm.coh2", "ZZA", "records_manager")
    for study, series, sops in ((first, s1, sops1), (other, s2, sops2)):
        r = c.post(f"/api/retention-deletions/{pending[study]}/approve", headers=approver)
        assert r.status_code == 409 and "legal hold" in r.text, r.text
        assert series_of(c, reader, study)[series] == len(sops)
        assert audit_rows(demo, study)[-1]["outcome"] == "denied"
    assert len(c.get("/api/retention-deletions", headers=manager).json()) == 2

    bad = {**cohort, "targets": [{"nhs_number": "1234567890"}]}
    assert c.post("/api/legal-holds", json=bad, headers=manager).status_code == 400
    both = {**cohort, "targets": [{"study_uid": first, "nhs_number": nhs}]}
    assert c.post("/api/legal-holds", json=both, headers=manager).status_code == 400


def test_records_managers_read_no_patient_data_and_admins_cannot_be_one(
    demo: Archive, demo_client: TestClient
) -> None:
    c = demo_client
    sender = add_user(demo, "rad.rm3", "ZZA", "clinician")
    manager = add_user(demo, "rm.three", "ZZA", "records_manager")
    study, series, sops = a_study(c, sender, "R5001", n=1)
    for path in (
        f"/api/studies/{study}",
        "/api/studies?issuer=ZZA&patient_id=R5001",
        "/api/identity/person?issuer=ZZA&patient_id=R5001",
        f"/api/viewer/studies/{study}",
        f"/dicomweb/studies/{study}/series/{series}/instances/{sops[0]}",
    ):
        r = c.get(path, headers=manager)
        assert r.status_code == 403 and "records_manager" in r.text, (path, r.text)
    # A search finds nothing (searches are filtered by the same rule).
    found = c.get(f"/dicomweb/studies?StudyInstanceUID={study}", headers=manager)
    assert found.status_code == 204 or found.json() == [], found.text
    root = add_user(demo, "root.rm", "ZZA", "pacs_admin")
    made = c.post(
        "/api/users",
        headers=root,
        json={"name": "both.rm", "trust": "ZZA", "roles": ["pacs_admin", "records_manager"]},
    )
    assert made.status_code == 400 and "records_manager" in made.text, made.text
