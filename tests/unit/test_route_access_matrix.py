"""Every HTTP route that reads patient data, generated from the OpenAPI document, called for
Bob (records at ZZB only) by a clinician with no relationship (ZZD) and by one with a
relationship (ZZB) — issue 11, "one guarded door".

* no relationship: the answer is byte for byte what the same request gets for a patient who
  does not exist (status, content type, body), and never carries Bob's name, ID or NHS number;
* a relationship: the data, and exactly one new audit record naming Bob.

A route added without a place in this table fails ``test_every_route_is_classified``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from solent.app import Archive
from solent.domain.principal import SYSTEM
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template

__all__ = ["demo", "demo_client", "demo_template"]


@dataclass(frozen=True)
class Target:
    """The identifiers a request names: Bob's, or a patient's who does not exist."""

    study: str
    series: str
    sop: str
    patient_pk: str
    study_pk: str
    local_id: str
    nhs: str
    name: str


NOBODY = Target(
    study="2.25.99999999901",
    series="2.25.99999999902",
    sop="2.25.99999999903",
    patient_pk="987654321",
    study_pk="987654322",
    local_id="B0000000",
    nhs="9434765919",
    name="NOBODY",
)
FHIR_NHS = "https://fhir.nhs.uk/Id/nhs-number"
FHIR_ZZB = "https://solent-pacs.nhs.example/Id/ZZB/patient-id"

#: GET routes that read patient data -> the request for a target (path and query).
PATIENT_ROUTES: dict[str, Callable[[Target], str]] = {
    "/api/patients": lambda t: "/api/patients?limit=1000",
    "/api/studies": lambda t: f"/api/studies?issuer=ZZB&patient_id={t.local_id}",
    "/api/studies/{study_uid}": lambda t: f"/api/studies/{t.study}",
    "/api/identity/person": lambda t: f"/api/identity/person?nhs_number={t.nhs}",
    "/api/identity/links": lambda t: f"/api/identity/links?issuer=ZZB&patient_id={t.local_id}",
    "/api/identity/history": lambda t: f"/api/identity/history?issuer=ZZB&patient_id={t.local_id}",
    "/fhir/Patient/{resource_id}": lambda t: f"/fhir/Patient/{t.patient_pk}",
    "/fhir/Patient": lambda t: f"/fhir/Patient?identifier={FHIR_NHS}|{t.nhs}",
    "/fhir/ImagingStudy": lambda t: (
        f"/fhir/ImagingStudy?patient.identifier={FHIR_ZZB}|{t.local_id}"
    ),
    "/fhir/ImagingStudy/{resource_id}": lambda t: f"/fhir/ImagingStudy/{t.study_pk}",
    "/fhir/DiagnosticReport": lambda t: (
        f"/fhir/DiagnosticReport?patient.identifier={FHIR_NHS}|{t.nhs}"
    ),
    "/IHEInvokeImageDisplay": lambda t: (
        f"/IHEInvokeImageDisplay?requestType=PATIENT&patientID={t.nhs}^^^NHS"
    ),
    "/trusts/{trust}/IHEInvokeImageDisplay": lambda t: (
        f"/trusts/ZZB/IHEInvokeImageDisplay?requestType=STUDY&studyUID={t.study}"
    ),
    "/iid/studies": lambda t: f"/iid/studies?uid={t.study}",
    "/dicomweb/studies": lambda t: f"/dicomweb/studies?PatientID={t.local_id}",
    "/dicomweb/series": lambda t: f"/dicomweb/series?StudyInstanceUID={t.study}",
    "/dicomweb/instances": lambda t: f"/dicomweb/instances?StudyInstanceUID={t.study}",
    "/dicomweb/studies/{study}/series": lambda t: f"/dicomweb/studies/{t.study}/series",
    "/dicomweb/studies/{study}/instances": lambda t: f"/dicomweb/studies/{t.study}/instances",
    "/dicomweb/studies/{study}/series/{series}/instances": lambda t: (
        f"/dicomweb/studies/{t.study}/series/{t.series}/instances"
    ),
    "/dicomweb/studies/{study}": lambda t: f"/dicomweb/studies/{t.study}",
    "/dicomweb/studies/{study}/series/{series}": lambda t: (
        f"/dicomweb/studies/{t.study}/series/{t.series}"
    ),
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}": lambda t: (
        f"/dicomweb/studies/{t.study}/series/{t.series}/instances/{t.sop}"
    ),
    "/dicomweb/studies/{study}/metadata": lambda t: f"/dicomweb/studies/{t.study}/metadata",
    "/dicomweb/studies/{study}/series/{series}/metadata": lambda t: (
        f"/dicomweb/studies/{t.study}/series/{t.series}/metadata"
    ),
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata": lambda t: (
        f"/dicomweb/studies/{t.study}/series/{t.series}/instances/{t.sop}/metadata"
    ),
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}": lambda t: (
        f"/dicomweb/studies/{t.study}/series/{t.series}/instances/{t.sop}/frames/1"
    ),
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}/rendered": lambda t: (
        f"/dicomweb/studies/{t.study}/series/{t.series}/instances/{t.sop}/rendered"
    ),
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}/rendered": (
        lambda t: (
            f"/dicomweb/studies/{t.study}/series/{t.series}/instances/{t.sop}/frames/1/rendered"
        )
    ),
    "/dicomweb/studies/{study}/thumbnail": lambda t: f"/dicomweb/studies/{t.study}/thumbnail",
    "/dicomweb/studies/{study}/series/{series}/thumbnail": lambda t: (
        f"/dicomweb/studies/{t.study}/series/{t.series}/thumbnail"
    ),
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}/thumbnail": lambda t: (
        f"/dicomweb/studies/{t.study}/series/{t.series}/instances/{t.sop}/thumbnail"
    ),
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}/thumbnail": (
        lambda t: (
            f"/dicomweb/studies/{t.study}/series/{t.series}/instances/{t.sop}/frames/1/thumbnail"
        )
    ),
    # Issue 12: the viewer's JSON API.
    "/api/viewer/search": lambda t: f"/api/viewer/search?trust=ZZB&patient_id={t.local_id}",
    "/api/viewer/patients/{issuer}/{patient_id}/timeline": lambda t: (
        f"/api/viewer/patients/ZZB/{t.local_id}/timeline"
    ),
    "/api/viewer/studies/{study_uid}": lambda t: f"/api/viewer/studies/{t.study}",
    "/api/viewer/studies/{study_uid}/reports": lambda t: f"/api/viewer/studies/{t.study}/reports",
    "/api/viewer/studies/{study_uid}/key-images": lambda t: (
        f"/api/viewer/studies/{t.study}/key-images"
    ),
    "/dicomweb/wado": lambda t: (
        f"/dicomweb/wado?requestType=WADO&studyUID={t.study}&seriesUID={t.series}"
        f"&objectUID={t.sop}&contentType=application/dicom"
    ),
}

#: GET routes that read no patient's data, or only the caller's own (and why).
OTHER_ROUTES = {
    "/api/stats": "counts over what the caller may see",
    "/api/trusts": "configuration",
    "/api/nodes": "configuration (administrators)",
    "/api/auth/me": "the caller",
    "/api/users": "accounts (administrators)",
    "/api/users/{name}": "an account (administrators of its trusts; test_security_admin)",
    "/api/tokens": "API tokens, never the secret (owner or administrators; test_security_tokens)",
    "/api/audit": "the audit trail (auditors)",
    "/api/audit/verify": "the audit trail (auditors)",
    "/api/break-glass/reasons": "a fixed list",
    "/api/break-glass": "the caller's own grants (auditors: all)",
    "/api/identity/data-quality": "scoped list; covered by test_guarded_door",
    "/api/identity/reports/unmatched": "scoped list; covered by test_guarded_door",
    "/api/identity/hl7/messages": "administrators of the sender's trust; test_guarded_door",
    "/fhir/metadata": "capability statement",
    "/fhir/DiagnosticReport/{resource_id}": "covered by test_guarded_door (needs a report)",
    "/api/identity/reports": "covered by test_guarded_door (needs a report)",
    "/api/viewer/recent": "the caller's own recently opened patients (a query record)",
    "/api/mdt/meetings": "meetings; each item without patient data unless visible (test_mdt)",
    "/api/mdt/meetings/{meeting_id}": "as /api/mdt/meetings, one meeting (test_mdt)",
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}/bulkdata/{path}": (
        "bulk data URIs come from metadata only; same study check as /frames"
    ),
}

#: Routes whose answer for the caller with a relationship is a redirect, not data.
REDIRECTS = {"/IHEInvokeImageDisplay", "/trusts/{trust}/IHEInvokeImageDisplay"}
#: List routes without the patient in the request: the result is the data, audited per query
#: without naming one patient, so only the outsider half applies.
LISTS = {"/api/patients"}


def _bob(archive: Archive) -> Target:
    identity = archive.identity
    found = identity.resolve("ZZB", "B7730444")
    assert found is not None
    record = identity.record(found.patient_pk)
    assert record is not None
    (study,) = identity.studies({found.patient_pk})[:1]
    series = identity.series(int(study["study_pk"]))[0]
    rows = archive.services.retrieve.instances(
        SYSTEM, study["study_uid"], series["series_uid"], channel="test setup"
    )
    return Target(
        study=study["study_uid"],
        series=series["series_uid"],
        sop=rows[0].sop_instance_uid,
        patient_pk=str(found.patient_pk),
        study_pk=str(study["study_pk"]),
        local_id="B7730444",
        nhs=record["record"]["nhs_number"],
        name="BOB",
    )


def _masked(body: bytes, t: Target) -> bytes:
    for i, value in enumerate(
        (t.study, t.series, t.sop, t.patient_pk, t.study_pk, t.local_id, t.nhs)
    ):
        body = body.replace(value.encode(), f"<{i}>".encode())
    return body


def test_every_route_is_classified(demo_client: TestClient) -> None:
    spec = demo_client.app.openapi()  # type: ignore[attr-defined]
    gets = {path for path, ops in spec["paths"].items() if "get" in ops}
    unclassified = gets - set(PATIENT_ROUTES) - set(OTHER_ROUTES)
    assert not unclassified, f"routes without a place in the access matrix: {unclassified}"
    assert not (set(PATIENT_ROUTES) - gets), "the matrix names routes that no longer exist"


@pytest.mark.parametrize("route", sorted(PATIENT_ROUTES))
def test_no_relationship_answers_like_nobody(
    demo: Archive, demo_client: TestClient, route: str
) -> None:
    outsider = add_user(demo, "drzd", "ZZD", "clinician")
    bob = _bob(demo)
    request = PATIENT_ROUTES[route]
    hidden = demo_client.get(request(bob), headers=outsider, follow_redirects=False)
    missing = demo_client.get(request(NOBODY), headers=outsider, follow_redirects=False)
    assert hidden.status_code == missing.status_code, hidden.text
    assert hidden.status_code in (200, 204, 400, 404), hidden.text
    assert hidden.headers.get("content-type") == missing.headers.get("content-type")
    assert "location" not in hidden.headers
    if route in LISTS:  # nobody is named in the request: the very same answer
        assert hidden.content == missing.content
    else:
        assert _masked(hidden.content, bob) == _masked(missing.content, NOBODY)
    for secret in (bob.local_id, bob.nhs, bob.name, bob.series, bob.sop):
        assert secret.encode() not in hidden.content


@pytest.mark.parametrize("route", sorted(set(PATIENT_ROUTES) - LISTS))
def test_relationship_gets_the_data_and_one_audit_record(
    demo: Archive, demo_client: TestClient, route: str
) -> None:
    insider = add_user(demo, "drzb", "ZZB", "clinician")
    bob = _bob(demo)
    before = len(demo.audit.search(patient_id=bob.local_id, actor_name="drzb", limit=1000))
    r = demo_client.get(PATIENT_ROUTES[route](bob), headers=insider, follow_redirects=False)
    expected = 303 if route in REDIRECTS else 200
    assert r.status_code == expected, r.text
    after = demo.audit.search(patient_id=bob.local_id, actor_name="drzb", limit=1000)
    assert len(after) - before == 1, [(a["action"], a["detail"]) for a in after]
