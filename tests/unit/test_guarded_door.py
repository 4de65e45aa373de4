"""Issue 11 findings, each as a regression test: a ZZA clinician probing patients who only have
records at other trusts learns nothing (status, headers and body as for nobody), and every read
that does return patient data leaves an audit record naming the patient.

Demo data: Alice has records at ZZA and ZZB (same traced NHS number); Bob only at ZZB; Carol at
ZZC and ZZD; David only at ZZD.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from solent.app import Archive
from solent.cli import main
from solent.demo import ALICE, CAROL
from solent.domain.principal import REGIONAL_IDENTITY_SOURCE, SYSTEM, Principal, PrincipalKind
from solent.protocols.hl7.handler import Hl7Handler
from solent.protocols.hl7.senders import SenderGate
from solent.services.identity import Change, Demographics, IdentityRejected, PatientKey
from solent.services.inbox import InboxReads
from tests.unit.security_fixtures import (
    add_user,
    cli_env,
    demo,
    demo_client,
    demo_template,
    study_of,
)

FHIR_NHS = "https://fhir.nhs.uk/Id/nhs-number"
LOCAL = "127.0.0.1:40000"

__all__ = ["demo", "demo_client", "demo_template"]


def _pk(archive: Archive, issuer: str, local_id: str) -> int:
    found = archive.identity.resolve(issuer, local_id)
    assert found is not None
    return found.patient_pk


def _study_pk(archive: Archive, uid: str) -> int:
    row = archive.identity.study(uid)
    assert row is not None
    return int(row["pk"])


def _nhs_of(archive: Archive, issuer: str, local_id: str) -> str:
    rec = archive.identity.record(_pk(archive, issuer, local_id))
    assert rec is not None
    return str(rec["record"]["nhs_number"])


def _entries(r: Any) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    return list(r.json().get("entry", []))


def _handler(archive: Archive) -> Hl7Handler:
    s = archive.services
    return Hl7Handler(
        s,
        link_senders=("ZZX",),
        gate=SenderGate(s.directory, s.audit),
    )


def _ack(reply: str) -> tuple[str, str]:
    msa = next(seg for seg in reply.split("\r") if seg.startswith("MSA|")).split("|")
    return msa[1], msa[3] if len(msa) > 3 else ""


def test_fhir_searches_name_nobody_outside_the_relationship(
    demo: Archive, demo_client: TestClient
) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    bob = _pk(demo, "ZZB", "B7730444")
    bob_nhs = _nhs_of(demo, "ZZB", "B7730444")
    c = demo_client
    # Counting _id up lists nobody the caller may not see.
    assert _entries(c.get(f"/fhir/Patient?_id={bob}", headers=h)) == []
    assert _entries(c.get(f"/fhir/Patient?identifier={FHIR_NHS}|{bob_nhs}", headers=h)) == []
    assert _entries(c.get(f"/fhir/ImagingStudy?patient=Patient/{bob}", headers=h)) == []
    q = f"patient.identifier={FHIR_NHS}|{CAROL}"
    assert _entries(c.get(f"/fhir/ImagingStudy?{q}", headers=h)) == []
    assert _entries(c.get(f"/fhir/DiagnosticReport?{q}", headers=h)) == []
    # The same searches for Alice (a linked record) find her, at both trusts.
    alice = _entries(c.get(f"/fhir/ImagingStudy?patient.identifier={FHIR_NHS}|{ALICE}", headers=h))
    assert len(alice) >= 2


def test_direct_reads_answer_like_unknown_without_an_oracle(
    demo: Archive, demo_client: TestClient
) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    bob_uid = study_of(demo, "ZZB", "B7730444")
    bob_study = _study_pk(demo, bob_uid)
    for path, unknown in (
        (f"/fhir/ImagingStudy/{bob_study}", "/fhir/ImagingStudy/987654321"),
        (f"/fhir/Patient/{_pk(demo, 'ZZB', 'B7730444')}", "/fhir/Patient/987654321"),
    ):
        hidden, missing = demo_client.get(path, headers=h), demo_client.get(unknown, headers=h)
        assert hidden.status_code == missing.status_code == 404
        assert hidden.content == missing.content
        assert bob_uid not in hidden.text
    denied = demo.audit.search(action="permission-denied", actor_name="drza")
    assert denied, "a refused read is audited"


def test_identity_api_is_scoped_to_the_relationship(demo: Archive, demo_client: TestClient) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    c = demo_client
    bob_nhs = _nhs_of(demo, "ZZB", "B7730444")
    hidden = c.get("/api/identity/person", params={"nhs_number": bob_nhs}, headers=h)
    unknown = c.get("/api/identity/person", params={"nhs_number": "9434765919"}, headers=h)
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json() == unknown.json()
    r = c.get("/api/identity/person", params={"nhs_number": ALICE}, headers=h)
    assert r.status_code == 200
    assert {rec["issuer"] for rec in r.json()["records"]} == {"ZZA", "ZZB"}
    for path in ("/api/identity/links", "/api/identity/history"):
        params = {"issuer": "ZZB", "patient_id": "B7730444"}
        assert c.get(path, params=params, headers=h).status_code == 404
    queue = c.get("/api/identity/data-quality", headers=h)
    assert queue.status_code == 200
    assert all(item["issuer"] in ("ZZA", "ZZB", None) for item in queue.json())


def test_reports_of_other_trusts_patients_are_not_readable(
    demo: Archive, demo_client: TestClient
) -> None:
    # ZZC's RIS files a report for Carol before any image arrives (no study yet).
    oru = (
        "MSH|^~\\&|RIS|ZZC|PACS|ZZX|20250314153000||ORU^R01^ORU_R01|C-R1|P|2.4\r"
        f"PID|1||C-55501^^^ZZC^MR~{CAROL}^^^NHS^NH||DEMO^CAROL^ANNE||20020615|F\r"
        "OBR|1||ZZC900001|XR^Chest XR|||20250314||||||||||ZZC900001||||20250314||CR|F\r"
        "OBX|1|TX|XR||Secret finding about Carol||||||F\r"
    )
    code, text = _ack(_handler(demo).handle(oru, LOCAL))
    assert code == "AA", text
    (report,) = InboxReads(demo.index).unmatched_reports()
    h = add_user(demo, "drza", "ZZA", "clinician")
    c = demo_client
    hidden = c.get(f"/fhir/DiagnosticReport/{report['pk']}", headers=h)
    missing = c.get("/fhir/DiagnosticReport/987654321", headers=h)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.content == missing.content
    assert c.get("/api/identity/reports/unmatched", headers=h).json() == []
    params = {"accession": "ZZC900001", "issuer": "ZZC"}
    assert c.get("/api/identity/reports", params=params, headers=h).status_code == 404
    # ZZC's own clinician reads it, and the read is audited naming Carol.
    hc = add_user(demo, "drzc", "ZZC", "clinician")
    r = c.get(f"/fhir/DiagnosticReport/{report['pk']}", headers=hc)
    assert r.status_code == 200 and "Secret finding" in r.text
    views = demo.audit.search(actor_name="drzc", patient_id="C-55501")
    assert any(v["action"] == "view" for v in views)


def test_iid_patient_launch_reveals_no_study_of_another_trust(
    demo: Archive, demo_client: TestClient
) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    bob_nhs = _nhs_of(demo, "ZZB", "B7730444")
    bob_uid = study_of(demo, "ZZB", "B7730444")
    r = demo_client.get(
        "/IHEInvokeImageDisplay",
        params={"requestType": "PATIENT", "patientID": f"{bob_nhs}^^^NHS"},
        headers=h,
        follow_redirects=False,
    )
    assert r.status_code == 404
    assert "location" not in r.headers and bob_uid not in r.text
    r = demo_client.get(
        "/IHEInvokeImageDisplay",
        params={"requestType": "PATIENT", "patientID": f"{ALICE}^^^NHS"},
        headers=h,
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert r.headers["location"] == f"/viewer/#/patient/NHS/{ALICE}"  # straight into the viewer


def test_a_trust_feed_cannot_link_or_unlink_other_trusts_records(
    demo: Archive, demo_client: TestClient
) -> None:
    handler = _handler(demo)
    a24 = (
        "MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250314120000||ADT^A24^ADT_A24|ZA-L1|P|2.4\r"
        "EVN|A24|20250314120000\r"
        "PID|1||A100001^^^ZZA^MR||DEMO^ALICE||19580312|F\r"
        "PID|2||C-55501^^^ZZC^MR||DEMO^CAROL^ANNE||20020615|F\r"
    )
    code, text = _ack(handler.handle(a24, LOCAL))
    assert code == "AE" and "speaks for ZZA only" in text
    h = add_user(demo, "drza", "ZZA", "clinician")
    carol_uid = study_of(demo, "ZZC", "C-55501")
    assert demo_client.get(f"/api/studies/{carol_uid}", headers=h).status_code == 404
    a37 = (
        "MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250314120000||ADT^A37^ADT_A37|ZA-U1|P|2.4\r"
        "EVN|A37|20250314120000\r"
        "PID|1||C-55501^^^ZZC^MR||DEMO^CAROL^ANNE||20020615|F\r"
        "PID|2||D000777^^^ZZD^MR||DEMO^CAROL^ANNE||20020615|F\r"
    )
    code, text = _ack(handler.handle(a37, LOCAL))
    assert code == "AE"
    carol = demo.identity.linked_patient_pks(_pk(demo, "ZZC", "C-55501"))
    assert _pk(demo, "ZZD", "D000777") in carol  # still linked
    # The regional identity source (EMPI, registered without a trust) may link across trusts.
    empi = a24.replace("|PAS|ZZA|", "|EMPI|ZZX|").replace("ZA-L1", "X-L1")
    code, text = _ack(handler.handle(empi, LOCAL))
    assert code == "AA", text


def test_a_sender_registered_regional_by_the_cli_may_link_across_trusts(
    demo: Archive, demo_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`solent hl7 sender add EMPI ZZE --regional` registers a regional identity source: its
    A24 linking a ZZA and a ZZC record is applied, one registered for ZZA only is refused."""
    cli_env(monkeypatch, demo.settings.data_dir)
    assert main(["hl7", "sender", "add", "EMPI", "ZZE", "--host", "127.0.0.1", "--regional"]) == 0
    assert main(["hl7", "sender", "add", "LAB", "ZZA", "--host", "127.0.0.1"]) == 0
    handler = Hl7Handler(demo.services, gate=SenderGate(demo.services.directory, demo.audit))
    a24 = (
        "MSH|^~\\&|LAB|ZZA|PACS|ZZX|20250314120000||ADT^A24^ADT_A24|L-1|P|2.4\r"
        "EVN|A24|20250314120000\r"
        "PID|1||A100001^^^ZZA^MR||DEMO^ALICE||19580312|F\r"
        "PID|2||C-55501^^^ZZC^MR||DEMO^CAROL^ANNE||20020615|F\r"
    )
    code, text = _ack(handler.handle(a24, LOCAL))
    assert code == "AE" and "names records of ZZC" in text and "--regional" in text
    alice, carol = _pk(demo, "ZZA", "A100001"), _pk(demo, "ZZC", "C-55501")
    assert carol not in demo.identity.linked_patient_pks(alice)
    code, text = _ack(handler.handle(a24.replace("|LAB|ZZA|", "|EMPI|ZZE|"), LOCAL))
    assert code == "AA", text
    assert carol in demo.identity.linked_patient_pks(alice)
    (rec,) = [
        r
        for r in demo.audit.search(action="patient-record", patient_id="A100001")
        if r["actor_name"] == "hl7:EMPI"
    ]
    assert json.loads(rec["detail"])["change"] == "linked"
    assert REGIONAL_IDENTITY_SOURCE in rec["actor_roles"], rec
    h = add_user(demo, "drza", "ZZA", "clinician")
    carol_uid = study_of(demo, "ZZC", "C-55501")
    assert demo_client.get(f"/api/studies/{carol_uid}", headers=h).status_code == 200


def test_the_identity_service_itself_refuses_a_feed_another_trusts_records(
    demo: Archive,
) -> None:
    """The per-trust rule lives in the service, not the HL7 adapter: a ZZA feed's principal
    calling the identity service directly is refused before any record is read."""
    zza = Principal(PrincipalKind.NODE, "hl7:PAS", "ZZA")
    a, c = PatientKey("ZZA", "A100001"), PatientKey("ZZC", "C-55501")
    d = PatientKey("ZZD", "D000777")
    for attempt in (
        lambda: demo.identity.link(a, c, Change(zza)),
        lambda: demo.identity.unlink(c, d, Change(zza)),
        lambda: demo.identity.update_record(c, Demographics(name="X^Y"), Change(zza)),
        lambda: demo.identity.merge(c, PatientKey("ZZC", "C-1"), Demographics(), Change(zza)),
        lambda: demo.identity.change_identifier(PatientKey("ZZC", "C-2"), c, Change(zza)),
        lambda: demo.identity.set_sensitive(c, True, Change(zza)),
    ):
        with pytest.raises(IdentityRejected, match="speaks for ZZA only"):
            attempt()
    regional = Principal(
        PrincipalKind.NODE, "hl7:EMPI", "ZZE", frozenset({REGIONAL_IDENTITY_SOURCE})
    )
    demo.identity.link(a, c, Change(regional))
    assert _pk(demo, "ZZC", "C-55501") in demo.identity.linked_patient_pks(
        _pk(demo, "ZZA", "A100001")
    )


def test_an_order_does_not_open_another_trusts_patient_without_evidence(
    demo: Archive, demo_client: TestClient
) -> None:
    orm = (
        "MSH|^~\\&|RIS|ZZA|PACS|ZZX|20250314113000||ORM^O01^ORM_O01|ZA-O1|P|2.4\r"
        f"PID|1||A999001^^^ZZA^MR~{CAROL}^^^NHS^NH||FAKE^PERSON||19000101|M\r"
        "ORC|NW|P1|ZZA0001||SC||^^^20250314113500^^S\r"
        "OBR|1|P1|ZZA0001|XR^Chest XR|||20250314113500|||||||||||ZZA0001|RP1|SPS1||||CR\r"
    )
    code, text = _ack(_handler(demo).handle(orm, LOCAL))
    assert code == "AA", text
    h = add_user(demo, "drza", "ZZA", "clinician")
    carol_uid = study_of(demo, "ZZC", "C-55501")
    assert demo_client.get(f"/api/studies/{carol_uid}", headers=h).status_code == 404
    found = demo_client.get("/api/studies", params={"limit": 1000}, headers=h).json()
    assert carol_uid not in {s["study_uid"] for s in found}


def test_reads_name_the_patient_in_the_audit_trail(demo: Archive, demo_client: TestClient) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    alice = _pk(demo, "ZZB", "B7730021")
    alice_uid = study_of(demo, "ZZB", "B7730021")
    c = demo_client
    assert c.get(f"/fhir/ImagingStudy/{_study_pk(demo, alice_uid)}", headers=h).status_code == 200
    assert _entries(c.get(f"/fhir/Patient?_id={alice}", headers=h))
    params = {"issuer": "ZZB", "patient_id": "B7730021"}
    assert c.get("/api/identity/links", params=params, headers=h).status_code == 200
    assert c.get("/api/identity/history", params=params, headers=h).status_code == 200
    rows = demo.audit.search(actor_name="drza")
    named = [r for r in rows if r["action"] in ("view", "query") and r["patient_id"]]
    assert {r["patient_id"] for r in named} >= {"B7730021"}
    assert len(named) >= 4


def test_raw_hl7_messages_are_audited_and_scoped_to_the_admins_trust(
    demo: Archive, demo_client: TestClient
) -> None:
    handler = _handler(demo)
    # ZZA's message first, then newer ones of ZZC: a limit counts only what ZZA may see.
    for trust, control in (("ZZA", "M-A"), ("ZZC", "M-C"), ("ZZC", "M-C2")):
        msg = (
            f"MSH|^~\\&|PAS|{trust}|PACS|ZZX|20250101||ADT^A28^ADT_A05|{control}|P|2.4\r"
            f"PID|1||{control}^^^{trust}^MR~9434765870^^^NHS^NH||DOE^JANE||19800101|F\r"
        )
        assert _ack(handler.handle(msg, LOCAL))[0] == "AA"
    admin = add_user(demo, "adminza", "ZZA", "pacs_admin")
    r = demo_client.get("/api/identity/hl7/messages", headers=admin)
    assert r.status_code == 200
    assert {m["control_id"] for m in r.json()} == {"M-A"}
    r = demo_client.get("/api/identity/hl7/messages?limit=1", headers=admin)
    assert [m["control_id"] for m in r.json()] == ["M-A"]
    reads = [a for a in demo.audit.search(actor_name="adminza", action="query") if a["patient_id"]]
    assert [(a["patient_issuer"], a["patient_id"], a["nhs_number"]) for a in reads] == [
        ("ZZA", "M-A", "9434765870")
    ] * 2
    clinician = add_user(demo, "drza", "ZZA", "clinician")
    assert demo_client.get("/api/identity/hl7/messages", headers=clinician).status_code == 403
    assert SYSTEM.trust is None


def _a28(control: str, local_id: str, nhs_number: str, birth_date: str) -> str:
    return (
        f"MSH|^~\\&|PAS|ZZA|PACS|ZZX|20261205120000||ADT^A28^ADT_A05|{control}|P|2.5\r"
        "EVN|A28|20261205120000\r"
        f"PID|1||{local_id}^^^ZZA^MR~{nhs_number}^^^NHS^NH||PEN^TESTER||{birth_date}|F\r"
    )


def test_data_quality_names_no_record_of_another_trust(
    demo: Archive, demo_client: TestClient
) -> None:
    """ZZA's feed files a record carrying Bob's NHS number with another date of birth (any ZZA
    PAS can, and ZZA staff then read their queue): the demographic-conflict item said
    "NHS number ...: A900001/ZZA and B7730444/ZZB disagree on date of birth 19800101 vs
    19710101". ZZA's clinicians and administrator must see what they see for a number nobody
    else holds; a regional administrator still gets the item."""
    bob_nhs = _nhs_of(demo, "ZZB", "B7730444")
    # A test-range number as Bob's is: a number outside the issued ranges would add its own
    # range warning (R2), which says nothing of other trusts but is not the same queue.
    nobody_nhs = "9991234578"
    for control, local_id, number in (
        ("PEN-1", "A900001", bob_nhs),
        ("PEN-2", "A900002", nobody_nhs),
    ):
        code, text = _ack(_handler(demo).handle(_a28(control, local_id, number, "19800101"), LOCAL))
        assert code == "AA", text
        assert "B7730444" not in text and "19710101" not in text
    c = demo_client

    def seen(headers: dict[str, str], local_id: str) -> list[tuple[str, str]]:
        queue = c.get("/api/identity/data-quality", headers=headers)
        assert queue.status_code == 200, queue.text
        assert "B7730444" not in queue.text and "19710101" not in queue.text
        return sorted(
            (i["kind"], i["detail"].replace(local_id, "<id>"))
            for i in queue.json()
            if i["local_id"] == local_id
        )

    clinician = add_user(demo, "drza", "ZZA", "clinician")
    admin = add_user(demo, "adminza", "ZZA", "pacs_admin")
    for h in (clinician, admin):
        hidden = [(k, d.replace(bob_nhs, "<nhs>")) for k, d in seen(h, "A900001")]
        missing = [(k, d.replace(nobody_nhs, "<nhs>")) for k, d in seen(h, "A900002")]
        assert hidden == missing
    person = c.get(
        "/api/identity/person", params={"issuer": "ZZA", "patient_id": "A900001"}, headers=clinician
    )
    assert person.status_code == 200, person.text
    assert "B7730444" not in person.text and "19710101" not in person.text
    assert all(i["kind"] != "demographic-conflict" for i in person.json()["work_items"])
    regional = add_user(demo, "root", None, "pacs_admin")
    items = c.get("/api/identity/data-quality", headers=regional).json()
    assert any(i["kind"] == "demographic-conflict" and "B7730444" in i["detail"] for i in items), (
        items
    )
