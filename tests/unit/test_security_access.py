"""Authorization through the JSON API: legitimate relationship, break-glass, no leaks, roles."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import update

from solent.app import Archive
from solent.demo import ALICE
from solent.domain.principal import SYSTEM, Principal, PrincipalKind
from solent.index import schema as t
from tests.unit.security_fixtures import (
    add_user,
    demo,
    demo_client,
    demo_template,
    study_of,
)

__all__ = ["demo", "demo_client", "demo_template"]


def test_clinician_sees_linked_study_at_other_trust_but_not_unrelated_patient(
    demo: Archive, demo_client: TestClient
) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    alice_zzb = study_of(demo, "ZZB", "B7730021")  # Alice's record at ZZB, linked by NHS number
    bob_zzb = study_of(demo, "ZZB", "B7730444")  # Bob: only ever seen at ZZB

    r = demo_client.get(f"/api/studies/{alice_zzb}", headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["issuer"] == "ZZB" and r.json()["nhs_number"] == ALICE

    # Not visible answers exactly like unknown (issue 11): same status, same words.
    r = demo_client.get(f"/api/studies/{bob_zzb}", headers=h)
    unknown = demo_client.get("/api/studies/1.2.3.999", headers=h)
    assert r.status_code == unknown.status_code == 404
    assert r.json() == {
        **unknown.json(),
        "detail": unknown.json()["detail"].replace("1.2.3.999", bob_zzb),
    }
    assert "break-glass" in r.json()["detail"]
    assert r.json()["break_glass"]["href"] == "/api/break-glass"

    r = demo_client.post(
        "/api/break-glass",
        headers=h,
        json={
            "reason": "transfer",
            "explanation": "transferred from ZZB ED, CT head needed now",
            "study_uid": bob_zzb,
        },
    )
    assert r.status_code == 201, r.text
    assert "reviewed" in r.json()["warning"]
    r = demo_client.get(f"/api/studies/{bob_zzb}", headers=h)
    assert r.status_code == 200 and r.json()["local_id"] == "B7730444"

    bob_records = demo.audit.search(patient_issuer="ZZB", patient_id="B7730444")
    actions = [(x["action"], x["outcome"], x["actor_name"]) for x in bob_records]
    assert ("permission-denied", "denied", "drza") in actions
    assert ("break-glass", "success", "drza") in actions
    assert ("view", "success", "drza") in actions
    glass = next(x for x in bob_records if x["action"] == "break-glass")
    assert glass["actor_trust"] == "ZZA" and glass["study_uid"] == bob_zzb
    assert glass["nhs_number"] and glass["purpose"] == "break-glass:transfer"
    detail = json.loads(glass["detail"])
    assert detail["priority"] == "high" and detail["review"] == "pending"


def test_break_glass_is_time_limited_and_for_one_patient(
    demo: Archive, demo_client: TestClient
) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    bob = study_of(demo, "ZZB", "B7730444")
    david = study_of(demo, "ZZD", "D000778")
    body = {"reason": "emergency", "explanation": "unconscious, no records here", "study_uid": bob}
    assert demo_client.post("/api/break-glass", headers=h, json=body).status_code == 201
    assert demo_client.get(f"/api/studies/{bob}", headers=h).status_code == 200
    assert demo_client.get(f"/api/studies/{david}", headers=h).status_code == 404  # another patient
    demo.index.write(
        lambda conn: conn.execute(
            update(t.break_glass).values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
        )
    )
    assert demo_client.get(f"/api/studies/{bob}", headers=h).status_code == 404


def test_break_glass_needs_a_reason_and_an_eligible_role(
    demo: Archive, demo_client: TestClient
) -> None:
    bob = study_of(demo, "ZZB", "B7730444")
    h = add_user(demo, "drza", "ZZA", "clinician")
    r = demo_client.post(
        "/api/break-glass",
        headers=h,
        json={"reason": "because", "explanation": "x" * 20, "study_uid": bob},
    )
    assert r.status_code == 400
    r = demo_client.post(
        "/api/break-glass",
        headers=h,
        json={"reason": "emergency", "explanation": "", "study_uid": bob},
    )
    assert r.status_code == 400
    mdt = add_user(demo, "mdt", "ZZA", "mdt_coordinator")
    r = demo_client.post(
        "/api/break-glass",
        headers=mdt,
        json={"reason": "emergency", "explanation": "meeting in 5 minutes", "study_uid": bob},
    )
    assert r.status_code == 403
    assert demo_client.get(f"/api/studies/{bob}", headers=mdt).status_code == 404


def test_queries_and_counts_never_show_what_the_user_may_not_see(
    demo: Archive, demo_client: TestClient
) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    rows = demo_client.get("/api/studies", headers=h).json()
    seen = {(r["issuer"], r["local_id"]) for r in rows}
    assert ("ZZB", "B7730021") in seen  # Alice at ZZB, linked
    assert not any(issuer in ("ZZC", "ZZD") for issuer, _ in seen)
    assert ("ZZB", "B7730444") not in seen
    # Asking for Bob by his identifiers returns nothing rather than a refusal.
    r = demo_client.get(
        "/api/studies", headers=h, params={"issuer": "ZZB", "patient_id": "B7730444"}
    )
    assert r.status_code == 200 and r.json() == []
    patients = {
        (p["issuer"], p["local_id"]) for p in demo_client.get("/api/patients", headers=h).json()
    }
    assert ("ZZB", "B7730444") not in patients and ("ZZB", "B7730021") in patients
    stats = demo_client.get("/api/stats", headers=h).json()
    everything = demo.index.stats()
    assert stats["studies"] == len(rows) < everything["studies"]
    assert stats["patients"] == len(patients) < everything["patients"]


def test_user_of_several_trusts_sees_each(demo: Archive, demo_client: TestClient) -> None:
    h = add_user(demo, "regional", "ZZA", "radiologist", other=("ZZB",))
    bob = study_of(demo, "ZZB", "B7730444")
    assert demo_client.get(f"/api/studies/{bob}", headers=h).status_code == 200


def test_administrators_manage_but_do_not_read_images(
    demo: Archive, demo_client: TestClient
) -> None:
    admin = add_user(demo, "admin", "ZZA", "pacs_admin")
    alice = study_of(demo, "ZZA", "A100001")
    assert demo_client.get(f"/api/studies/{alice}", headers=admin).status_code == 403
    assert demo_client.get("/api/studies", headers=admin).status_code == 403
    assert demo_client.get("/api/nodes", headers=admin).status_code == 200
    r = demo_client.post(
        "/api/users",
        headers=admin,
        json={"name": "radza", "trust": "ZZA", "roles": ["radiologist"], "password": "x" * 16},
    )
    assert r.status_code == 201, r.text
    assert {u["name"] for u in demo_client.get("/api/users", headers=admin).json()} == {
        "admin",
        "radza",
    }
    clinician = add_user(demo, "drza", "ZZA", "clinician")
    assert demo_client.get("/api/users", headers=clinician).status_code == 403
    assert demo_client.get("/api/nodes", headers=clinician).status_code == 403


def test_auditor_searches_by_patient_and_by_user(demo: Archive, demo_client: TestClient) -> None:
    clinician = add_user(demo, "drza", "ZZA", "clinician")
    auditor = add_user(demo, "caldicott", "ZZB", "auditor")
    alice_zzb = study_of(demo, "ZZB", "B7730021")
    assert demo_client.get(f"/api/studies/{alice_zzb}", headers=clinician).status_code == 200
    # "Who at any trust looked at my patient?"
    r = demo_client.get(
        "/api/audit",
        headers=auditor,
        params={"issuer": "ZZB", "patient_id": "B7730021", "action": "view"},
    )
    assert r.status_code == 200
    assert [(x["actor_name"], x["actor_trust"], x["study_uid"]) for x in r.json()] == [
        ("drza", "ZZA", alice_zzb)
    ]
    by_user = demo_client.get("/api/audit", headers=auditor, params={"user": "drza"}).json()
    assert {x["action"] for x in by_user} >= {"view"}
    by_nhs = demo_client.get("/api/audit", headers=auditor, params={"nhs_number": ALICE}).json()
    assert any(x["action"] == "view" for x in by_nhs)
    fhir = demo_client.get(
        "/api/audit", headers=auditor, params={"user": "drza", "format": "fhir"}
    ).json()
    assert (
        fhir["resourceType"] == "Bundle"
        and fhir["entry"][0]["resource"]["resourceType"] == "AuditEvent"
    )
    # Reading the trail is itself audited, and clinicians cannot read it.
    assert demo.audit.search(actor_name="caldicott", action="audit-log-used")
    assert demo_client.get("/api/audit", headers=clinician).status_code == 403
    assert demo_client.get("/api/audit/verify", headers=auditor).json()["intact"] is True


def test_auditor_reviews_break_glass(demo: Archive, demo_client: TestClient) -> None:
    clinician = add_user(demo, "drza", "ZZA", "clinician")
    auditor = add_user(demo, "privacy", "ZZB", "auditor")
    bob = study_of(demo, "ZZB", "B7730444")
    demo_client.post(
        "/api/break-glass",
        headers=clinician,
        json={"reason": "emergency", "explanation": "anaphylaxis in resus", "study_uid": bob},
    )
    pending = demo_client.get(
        "/api/break-glass", headers=auditor, params={"unreviewed": True}
    ).json()
    assert [(g["user"], g["patient"]["patient_id"]) for g in pending] == [("drza", "B7730444")]
    grant = pending[0]["grant"]
    assert (
        demo_client.post(
            f"/api/break-glass/{grant}/review", headers=clinician, json={"note": "ok"}
        ).status_code
        == 403
    )
    r = demo_client.post(
        f"/api/break-glass/{grant}/review", headers=auditor, json={"note": "justified"}
    )
    assert r.status_code == 200
    assert (
        demo_client.get("/api/break-glass", headers=auditor, params={"unreviewed": True}).json()
        == []
    )


def test_a_trust_auditor_reads_only_what_concerns_the_trust(
    demo: Archive, demo_client: TestClient
) -> None:
    """An auditor of ZZA searched the whole trail: every record naming Bob (ZZB only) - ZZB's
    staff reading him, his NHS number, study and SOP UIDs - and every break-glass grant of the
    region. A trust's privacy function now reads the records about its patients and those of
    its own staff and nodes (not their refusals naming another trust's patient, which resolve
    to his NHS number); Bob answers like nobody. ZZB's auditor and one of every trust still
    see all of it."""
    c = demo_client
    drza = add_user(demo, "drza", "ZZA", "clinician")
    drzb = add_user(demo, "drzb", "ZZB", "clinician")
    drzc = add_user(demo, "drzc", "ZZC", "clinician")
    bob = study_of(demo, "ZZB", "B7730444")
    bob_nhs = demo.identity.record(demo.identity.resolve("ZZB", "B7730444").patient_pk)  # type: ignore[union-attr]
    assert bob_nhs is not None
    nhs_number = str(bob_nhs["record"]["nhs_number"])
    assert c.get(f"/api/studies/{bob}", headers=drzb).status_code == 200
    assert c.get(f"/api/studies/{bob}", headers=drza).status_code == 404  # refused, audited
    alice = study_of(demo, "ZZA", "A100001")
    assert c.get(f"/api/studies/{alice}", headers=drza).status_code == 200
    r = c.post(
        "/api/break-glass",
        headers=drzc,
        json={
            "reason": "emergency",
            "explanation": "child in resus, no records",
            "issuer": "ZZD",
            "patient_id": "D000778",
        },
    )
    assert r.status_code == 201, r.text
    grant = r.json()["grant"]

    za = add_user(demo, "privacy_za", "ZZA", "auditor")
    for params in (
        {"issuer": "ZZB", "patient_id": "B7730444"},
        {"nhs_number": nhs_number},
        {"study_uid": bob},
        {"issuer": "ZZD", "patient_id": "D000778"},
    ):
        rows = c.get("/api/audit", headers=za, params=params)
        assert (rows.status_code, rows.json()) == (200, []), params
    mine = c.get("/api/audit", headers=za, params={"user": "drza"}).json()
    assert [(r["action"], r["study_uid"]) for r in mine] == [("view", alice)]
    everything = json.dumps(  # but the auditor's own searches, which name what they typed
        [
            r
            for r in c.get("/api/audit", headers=za, params={"limit": 1000}).json()
            if r["actor_name"] != "privacy_za"
        ]
    )
    for secret in ("B7730444", nhs_number, bob, "D000778"):
        assert secret not in everything
    assert c.get("/api/break-glass", headers=za).json() == []
    refused = c.post(f"/api/break-glass/{grant}/review", headers=za, json={"note": "seen"})
    unknown = c.post("/api/break-glass/987654/review", headers=za, json={"note": "seen"})
    assert refused.status_code == unknown.status_code == 404

    zb = add_user(demo, "privacy_zb", "ZZB", "auditor")
    about_bob = c.get("/api/audit", headers=zb, params={"issuer": "ZZB", "patient_id": "B7730444"})
    who = {(r["actor_name"], r["outcome"]) for r in about_bob.json()}
    assert {("drzb", "success"), ("drza", "denied")} <= who
    zd = add_user(demo, "privacy_zd", "ZZD", "auditor")
    assert [g["grant"] for g in c.get("/api/break-glass", headers=zd).json()] == [grant]
    regional = add_user(demo, "privacy", "ZZA", "auditor", other=("ZZB", "ZZC", "ZZD"))
    assert [g["grant"] for g in c.get("/api/break-glass", headers=regional).json()] == [grant]
    seen = c.get("/api/audit", headers=regional, params={"issuer": "ZZB", "patient_id": "B7730444"})
    assert {(r["actor_name"], r["outcome"]) for r in seen.json()} == who
    assert (
        c.post(f"/api/break-glass/{grant}/review", headers=zd, json={"note": "ok"}).status_code
        == 200
    )


def test_shared_filters_for_other_adapters(demo: Archive) -> None:
    """The filters DICOMweb, DIMSE and FHIR use: same rule as the JSON API."""
    clinician = Principal(PrincipalKind.USER, "ext", "ZZA", frozenset({"clinician"}))
    node = Principal(PrincipalKind.NODE, "ZZB_CT", "ZZB")
    from sqlalchemy import select

    def visible(p: Principal) -> set[str]:
        q = select(t.patient.c.local_id).where(demo.access.patient_filter(p))
        with demo.index.read() as conn:
            return set(conn.scalars(q))

    assert "B7730444" not in visible(clinician) and "B7730021" in visible(clinician)
    assert {"B7730444", "B7730021", "A100001"} <= visible(node)  # Alice via the link
    assert "D000778" not in visible(node)
    everything = visible(SYSTEM)
    assert len(everything) == demo.index.stats()["patients"]


def test_storing_needs_a_store_role_and_refusals_are_audited(
    archive: Archive, corpus_dir: Path
) -> None:
    from solent.domain.outcomes import Outcome, RejectReason
    from solent.domain.principal import Channel, Provenance

    f = corpus_dir / "ts_explicit_vr_le_mr_siemens_trio.dcm"
    auditor = Principal(PrincipalKind.USER, "aud", "ZZA", frozenset({"auditor"}), "10.0.0.9")
    r = archive.ingestor.ingest_file(f, auditor, Provenance(Channel.STOW))
    assert r.outcome is Outcome.REJECTED and r.reason is RejectReason.NOT_PERMITTED
    assert archive.index.stats()["instances"] == 0
    radiologist = Principal(PrincipalKind.USER, "rad", "ZZA", frozenset({"radiologist"}))
    assert archive.ingestor.ingest_file(f, radiologist, Provenance(Channel.STOW)).ok
    refused = archive.audit.search(actor_name="aud")
    assert [(x["action"], x["outcome"], x["actor_address"]) for x in refused] == [
        ("store", "failure", "10.0.0.9")
    ]
    assert json.loads(refused[0]["detail"])["outcome"] == "not-permitted"
    stored = archive.audit.search(actor_name="rad")
    assert stored[0]["outcome"] == "success" and stored[0]["patient_id"]


def test_retrieve_only_locates_studies_the_caller_may_read(demo: Archive) -> None:
    """C-MOVE / C-GET / WADO go through RetrieveService.locate: same rule as queries."""
    from solent.services.retrieve import RetrieveKeys

    retrieve = demo.services.retrieve
    bob = study_of(demo, "ZZB", "B7730444")
    alice_zzb = study_of(demo, "ZZB", "B7730021")
    keys = RetrieveKeys("STUDY", study_uids=(bob, alice_zzb))
    node_zza = Principal(PrincipalKind.NODE, "ZZA_WS", "ZZA")
    node_zzb = Principal(PrincipalKind.NODE, "ZZB_WS", "ZZB")
    assert {
        r.study_uid for r in retrieve.locate(node_zza, keys, channel="test", destination="T")
    } == {alice_zzb}
    assert {
        r.study_uid for r in retrieve.locate(node_zzb, keys, channel="test", destination="T")
    } == {bob, alice_zzb}


def test_an_explicit_link_opens_only_the_linked_record(demo: Archive) -> None:
    """An A24/admin link makes the linked record visible, and nothing else (a link elsewhere
    must not open every patient)."""
    from sqlalchemy import insert, select

    from solent.index.sql import now

    def pk(issuer: str, local_id: str) -> int:
        with demo.index.read() as conn:
            return int(
                conn.scalar(
                    select(t.patient.c.pk).where(
                        t.patient.c.issuer == issuer, t.patient.c.local_id == local_id
                    )
                )
            )

    alice, david = pk("ZZA", "A100001"), pk("ZZD", "D000778")
    demo.index.write(
        lambda conn: conn.execute(
            insert(t.patient_link).values(
                patient_a=min(alice, david),
                patient_b=max(alice, david),
                status="linked",
                source="admin",
                updated_by="test",
                updated_at=now(),
            )
        )
    )
    clinician = Principal(PrincipalKind.USER, "ext", "ZZA", frozenset({"clinician"}))
    q = select(t.patient.c.local_id).where(demo.access.patient_filter(clinician))
    with demo.index.read() as conn:
        seen = set(conn.scalars(q))
    assert "D000778" in seen
    assert "B7730444" not in seen and "C-55501" not in seen
