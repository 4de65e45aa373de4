"""R32: the radiology input to an MDT recorded against the studies reviewed, visible to whoever
may see those studies at any trust, and a discrepancy with the original report flagged to its
primary reporter (OBR-32 of ZZB's ORU) at the reporting trust. Real HL7 in, real HTTP out."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from solent.app import Archive
from solent.domain.principal import SYSTEM, Principal, PrincipalKind
from solent.errors import InvalidInput, NotFound
from solent.protocols.hl7.handler import Hl7Handler
from solent.protocols.hl7.senders import SenderGate
from solent.services.access import AccessDenied
from solent.services.mdt import NewItem
from solent.services.mdt_outcomes import NewOutcome, Reviewed
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template

__all__ = ["demo", "demo_client", "demo_template"]

ZZB_IDS = "https://solent-pacs.nhs.example/Id/ZZB/patient-id"
OPINION = "Spiculated RUL nodule 14 mm, was 9 mm: progression."


def _study(demo: Archive, issuer: str, local_id: str) -> dict[str, Any]:
    return dict(demo.query.list_studies(SYSTEM, issuer=issuer, local_id=local_id)[0])


def _who(name: str, trust: str, role: str) -> Principal:
    return Principal(PrincipalKind.USER, name, trust, frozenset({role}))


def _file_report(demo: Archive, accession: str, obr32: str) -> None:
    """ZZB's RIS reports Alice's ZZB study; OBR-32 names the principal result interpreter."""
    obr = ["OBR", "1", "", accession, "CT^CT chest", "", "", "20260105"]
    obr += [""] * (32 - len(obr) + 1)
    obr[25] = "F"
    obr[32] = obr32
    oru = (
        "MSH|^~\\&|RIS|ZZB|PACS|ZZX|20260105153000||ORU^R01^ORU_R01|R32-1|P|2.4\r"
        "PID|1||B7730021^^^ZZB^MR||DEMO^ALICE||19580312|F\r"
        + "|".join(obr)
        + "\r"
        + "OBX|1|TX|CT||No significant change in the RUL nodule.||||||F\r"
    )
    s = demo.services
    reply = Hl7Handler(s, gate=SenderGate(s.directory, s.audit)).handle(oru, "127.0.0.1:40000")
    assert "MSA|AA" in reply, reply


@pytest.fixture
def meeting(demo: Archive) -> dict[str, Any]:
    """Alice listed with her ZZA and ZZB studies; her ZZB study reported by ZZB's radzb."""
    heads: dict[str, dict[str, str]] = {}
    for name, trust, role in (
        ("coord", "ZZA", "mdt_coordinator"),
        ("radza", "ZZA", "radiologist"),
        ("drza", "ZZA", "clinician"),
        ("radzb", "ZZB", "radiologist"),
        ("radzb2", "ZZB", "radiologist"),
        ("drzb", "ZZB", "clinician"),
        ("radzd", "ZZD", "radiologist"),
    ):
        heads[name] = add_user(demo, name, trust, role, password=None)
    zza, zzb = _study(demo, "ZZA", "A100001"), _study(demo, "ZZB", "B7730021")
    _file_report(demo, zzb["accession_number"], "RADZB&REPORTER&RITA")
    m = demo.services.mdt.create(
        _who("coord", "ZZA", "mdt_coordinator"),
        title="Lung MDT",
        date="2026-12-07",
        team="Lung",
        items=[NewItem("ZZA", "A100001", (zza["study_uid"], zzb["study_uid"]))],
    )
    study = demo.identity.study(zzb["study_uid"])
    assert study is not None
    series = demo.identity.series(int(study["pk"]))[0]["series_uid"]
    return {
        "id": m["id"],
        "item": m["items"][0]["id"],
        "zza": zza,
        "zzb": zzb,
        "series": series,
        "heads": heads,
    }


def test_outcome_is_recorded_audited_and_reaches_the_primary_reporter_at_another_trust(
    demo: Archive, meeting: dict[str, Any]
) -> None:
    svc = demo.services.mdt_outcomes
    radza = _who("radza", "ZZA", "radiologist")
    zzb_uid = meeting["zzb"]["study_uid"]
    outcome = NewOutcome(
        OPINION,
        "Refer for CT-guided biopsy.",
        (Reviewed(zzb_uid, (meeting["series"],)), Reviewed(meeting["zza"]["study_uid"])),
        discrepancy=True,
        discrepancy_note="Report says no change; the nodule has grown.",
    )
    done = svc.record(radza, meeting["id"], meeting["item"], outcome)
    assert (done["by"], done["trust"], done["discrepancy"]) == ("radza", "ZZA", True)
    assert done["reviewed"][0] == {"study_uid": zzb_uid, "series_uids": [meeting["series"]]}
    # One notice: only the ZZB study has a report; it is addressed to its reporter, at ZZB.
    assert [(n["trust"], n["reporter"], n["status"]) for n in done["notices"]] == [
        ("ZZB", "REPORTER^RITA", "open")
    ]

    # Audited: the recording (the meeting as purpose) and the notice, in the same transaction.
    records = demo.audit.search(actor_name="radza", action="patient-record", limit=50)
    details = [json.loads(r["detail"]) for r in records]
    assert [d["mdt"] for d in details] == [
        "outcome recorded",
        "discrepancy flagged to the primary reporter",
    ]
    assert {r["purpose"] for r in records} == {f"mdt:{meeting['id']}"}
    assert records[1]["patient_issuer"] == "ZZB" and records[1]["study_uid"] == zzb_uid

    # The primary reporter (user name = OBR-32 ID, at the reporting trust) has it in their inbox.
    radzb = _who("radzb", "ZZB", "radiologist")
    inbox = demo.services.reporter_notices
    (notice,) = inbox.notices(radzb)["notices"]
    assert (notice["study_uid"], notice["opinion"], notice["flagged_by"]) == (
        zzb_uid,
        OPINION,
        "radza",
    )
    assert notice["patient"] == {"issuer": "ZZB", "patient_id": "B7730021"}
    assert demo.audit.search(actor_name="radzb", action="view", study_uid=zzb_uid, limit=5)
    # Not another radiologist of ZZB, nor the MDT radiologist at ZZA.
    assert inbox.notices(_who("radzb2", "ZZB", "radiologist"))["notices"] == []
    assert inbox.notices(radza)["notices"] == []
    with pytest.raises(NotFound):
        inbox.acknowledge(_who("radzb2", "ZZB", "radiologist"), notice["id"], "not mine")
    closed = inbox.acknowledge(radzb, notice["id"], "Addendum issued.")
    assert (closed["status"], closed["acknowledged_by"]) == ("acknowledged", "radzb")
    assert inbox.notices(radzb)["notices"] == []
    assert [n["id"] for n in inbox.notices(radzb, status=None)["notices"]] == [notice["id"]]
    with pytest.raises(InvalidInput):
        inbox.acknowledge(radzb, notice["id"], "again")


def test_recording_is_for_radiologists_who_see_the_patient_and_the_items_studies(
    demo: Archive, meeting: dict[str, Any]
) -> None:
    svc = demo.services.mdt_outcomes
    m, item = meeting["id"], meeting["item"]
    plain = NewOutcome(OPINION, "", (Reviewed(meeting["zza"]["study_uid"]),))
    with pytest.raises(AccessDenied):  # a clinician takes part, but gives no radiology input
        svc.record(_who("drza", "ZZA", "clinician"), m, item, plain)
    with pytest.raises(NotFound):  # ZZD has no relationship with Alice: like no such item
        svc.record(_who("radzd", "ZZD", "radiologist"), m, item, plain)
    radza = _who("radza", "ZZA", "radiologist")
    bob = _study(demo, "ZZB", "B7730444")["study_uid"]
    bad = [
        NewOutcome(OPINION, "", (Reviewed(bob),)),  # not one of the item's studies
        NewOutcome(OPINION, "", (Reviewed(meeting["zza"]["study_uid"], (meeting["series"],)),)),
        NewOutcome(" ", "", (Reviewed(meeting["zza"]["study_uid"]),)),
        # The ZZA study has no report: nothing to be discrepant with.
        NewOutcome(OPINION, "", (Reviewed(meeting["zza"]["study_uid"]),), True, "differs"),
        NewOutcome(OPINION, "", (Reviewed(meeting["zzb"]["study_uid"]),), True, ""),
    ]
    for outcome in bad:
        with pytest.raises(InvalidInput):
            svc.record(radza, m, item, outcome)
    assert svc.for_item(radza, m, item) == {"outcomes": []}  # nothing stored
    svc.record(radza, m, item, plain)
    assert [o["opinion"] for o in svc.for_item(radza, m, item)["outcomes"]] == [OPINION]


def test_outcomes_over_http_from_the_study_at_any_trust_and_the_reporters_inbox(
    demo: Archive, demo_client: TestClient, meeting: dict[str, Any]
) -> None:
    h = meeting["heads"]
    base = f"/api/mdt/meetings/{meeting['id']}/items/{meeting['item']}/outcomes"
    zzb_uid = meeting["zzb"]["study_uid"]
    body = {
        "opinion": OPINION,
        "plan": "Biopsy.",
        "reviewed": [{"study_uid": zzb_uid, "series_uids": [meeting["series"]]}],
        "discrepancy": True,
        "discrepancy_note": "Growth not reported.",
    }
    r = demo_client.post(base, json=body, headers=h["radza"])
    assert r.status_code == 201, r.text
    assert demo_client.post(base, json=body, headers=h["drza"]).status_code == 403
    bad = demo_client.post(base, json={**body, "reviewed": []}, headers=h["radza"])
    assert bad.status_code == 400 and "reviewed" in bad.text
    assert demo_client.post(base, json=body, headers=h["radzd"]).status_code == 404
    listed = demo_client.get(base, headers=h["drza"]).json()["outcomes"]
    assert [o["plan"] for o in listed] == ["Biopsy."]

    # From the study: a ZZB clinician who was never at the meeting sees it; ZZD does not.
    on_study = demo_client.get(f"/api/viewer/studies/{zzb_uid}/mdt-outcomes", headers=h["drzb"])
    assert [o["opinion"] for o in on_study.json()["outcomes"]] == [OPINION]
    hidden = demo_client.get(f"/api/viewer/studies/{zzb_uid}/mdt-outcomes", headers=h["radzd"])
    assert (hidden.status_code, hidden.json()) == (404, {"detail": "no such study"})

    # Exported over FHIR as a supplementary DiagnosticReport, read by id and found with the
    # person's reports (the RIS report of the same study alongside).
    outcome_id = r.json()["id"]
    fhir = demo_client.get(f"/fhir/DiagnosticReport/mdt-{outcome_id}", headers=h["drzb"])
    assert fhir.status_code == 200, fhir.text
    report = fhir.json()
    assert report["resourceType"] == "DiagnosticReport" and report["status"] == "final"
    assert report["conclusion"].startswith(f"MDT opinion: {OPINION}")
    assert "Discrepancy with the original report: Growth not reported." in report["conclusion"]
    study = demo.identity.study(zzb_uid)
    assert study is not None
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{study['pk']}"}]
    assert report["subject"] == {"reference": f"Patient/{study['patient_pk']}"}
    for nobody in (f"mdt-{outcome_id}", "mdt-999999"):
        hidden = demo_client.get(f"/fhir/DiagnosticReport/{nobody}", headers=h["radzd"])
        assert hidden.status_code == 404 and hidden.json()["resourceType"] == "OperationOutcome"
    token = f"{ZZB_IDS}|B7730021"
    found = demo_client.get(
        "/fhir/DiagnosticReport", params={"patient.identifier": token}, headers=h["drzb"]
    ).json()
    ids = [e["resource"]["id"] for e in found["entry"]]
    assert f"mdt-{outcome_id}" in ids and len(ids) == 2, ids

    inbox = demo_client.get("/api/viewer/notices", headers=h["radzb"]).json()["notices"]
    assert [(n["study_uid"], n["discrepancy_note"]) for n in inbox] == [
        (zzb_uid, "Growth not reported.")
    ]
    ack = f"/api/viewer/notices/{inbox[0]['id']}/acknowledge"
    assert demo_client.post(ack, json={}, headers=h["radzb2"]).status_code == 404
    r = demo_client.post(ack, json={"response": "Addendum issued."}, headers=h["radzb"])
    assert r.status_code == 200 and r.json()["status"] == "acknowledged"
    assert demo_client.post(ack, json={}, headers=h["radzb"]).status_code == 400
    assert demo_client.get("/api/viewer/notices", headers=h["radzb"]).json() == {"notices": []}
