"""Every HTTP route of the OpenAPI document, every method, generated — issue 11, "one guarded
door". Each route that reads or changes patient data is called for Bob (records at ZZB only):

* by callers with no relationship (a clinician and a radiologist of ZZD; for administration
  and MDT routes, that role at ZZD): the answer is byte for byte what the same request gets
  for a patient who does not exist (status, content type, body; no Location), and never
  carries Bob's name, ID, NHS number or series/instance UIDs;
* by callers with a relationship — own trust (a ZZB clinician and radiologist), through a
  link (a ZZC clinician, Bob linked to a ZZC record), through an active break-glass grant (a
  ZZA clinician), or the administrators who may act on ZZB's records: the data (the answer
  names Bob, unless it is only pixels or empty) and exactly one new audit record naming Bob.

A route (or method) added without a place in these tables fails
``test_every_route_is_classified``; one not exercised is listed with the reason.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from solent.app import Archive
from solent.domain.principal import SYSTEM
from solent.index import schema
from solent.protocols.hl7.handler import Hl7Handler
from solent.protocols.hl7.senders import SenderGate
from solent.services.identity import Change, Demographics, PatientKey
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template
from tests.unit.stow_support import ct_instance, rejection_note, stow_body

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
    accession: str = "ZZB000000001"
    new_sop: str = "2.25.77700"  # of an instance a STOW sends (the same for Bob and nobody)
    report: str = "987654328"
    #: Keys of things made for the call (key image, MDT meeting item, identity event, work item).
    key_image: str = "987654323"
    meeting: str = "987654324"
    item: str = "987654325"
    event: str = "987654326"
    work_item: str = "987654327"

    def masks(self) -> tuple[str, ...]:
        return (
            self.study, self.series, self.sop, self.patient_pk, self.study_pk, self.local_id,
            self.nhs, self.accession, self.report, self.key_image, self.item, self.event,
            self.work_item,
        )  # fmt: skip


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


@dataclass(frozen=True)
class Call:
    """One request: method, path with query, and a JSON or raw body."""

    method: str
    url: str
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def get(url: str) -> Call:
    return Call("GET", url)


_uniq = itertools.count(1)


def _stow(t: Target, in_url: bool) -> Call:
    """An instance naming Bob (his ZZB ID) into his series; the same with nobody's UIDs."""
    instance = ct_instance(t.local_id, "ZZB", t.study, series=t.series, sop=t.new_sop)
    body, headers = stow_body(instance)
    url = f"/dicomweb/studies/{t.study}" if in_url else "/dicomweb/studies"
    return Call("POST", url, content=body, headers=headers)


def _pair(t: Target) -> dict[str, Any]:
    return {"a": {"issuer": "ZZB", "patient_id": t.local_id}, "b": PAIR}


#: The other record of an administrator's link or unlink: Alice's at ZZB.
PAIR = {"issuer": "ZZB", "patient_id": "B7730021"}


#: GET routes that read patient data -> the path and query for a target.
GET_ROUTES: dict[str, Callable[[Target], str]] = {
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
    "/fhir/Patient/$ihe-pix": lambda t: (
        f"/fhir/Patient/$ihe-pix?sourceIdentifier={FHIR_ZZB}|{t.local_id}"
    ),
    "/fhir/DocumentReference": lambda t: (
        f"/fhir/DocumentReference?patient.identifier={FHIR_ZZB}|{t.local_id}"
    ),
    "/fhir/DocumentReference/{resource_id}": lambda t: f"/fhir/DocumentReference/{t.study_pk}",
    "/fhir/Binary/{resource_id}": lambda t: f"/fhir/Binary/{t.study_pk}",
    "/fhir/DiagnosticReport": lambda t: (
        f"/fhir/DiagnosticReport?patient.identifier={FHIR_NHS}|{t.nhs}"
    ),
    "/IHEInvokeImageDisplay": lambda t: (
        f"/IHEInvokeImageDisplay?requestType=PATIENT&patientID={t.nhs}^^^NHS"
    ),
    "/trusts/{trust}/IHEInvokeImageDisplay": lambda t: (
        f"/trusts/ZZB/IHEInvokeImageDisplay?requestType=STUDY&studyUID={t.study}"
    ),
    "/api/viewer/launch": lambda t: (
        f"/api/viewer/launch?trust=ZZB&requestType=STUDY&studyUID={t.study}"
    ),
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
    "/api/viewer/studies/{study_uid}/key-objects": lambda t: (
        f"/api/viewer/studies/{t.study}/key-objects"
    ),
    # R32: MDT outcomes recorded against a study, and those of a meeting item.
    "/api/viewer/studies/{study_uid}/mdt-outcomes": lambda t: (
        f"/api/viewer/studies/{t.study}/mdt-outcomes"
    ),
    "/api/mdt/meetings/{meeting_id}/items/{item_id}/outcomes": lambda t: (
        f"/api/mdt/meetings/{t.meeting}/items/{t.item}/outcomes"
    ),
    "/fhir/DiagnosticReport/{resource_id}": lambda t: f"/fhir/DiagnosticReport/{t.report}",
    "/api/identity/reports": lambda t: f"/api/identity/reports?accession={t.accession}&issuer=ZZB",
    "/dicomweb/wado": lambda t: (
        f"/dicomweb/wado?requestType=WADO&studyUID={t.study}&seriesUID={t.series}"
        f"&objectUID={t.sop}&contentType=application/dicom"
    ),
}

#: Other methods that change or read patient data -> the request for a target.
CHANGE_ROUTES: dict[tuple[str, str], Callable[[Target], Call]] = {
    ("POST", "/dicomweb/studies"): lambda t: _stow(t, in_url=False),
    ("POST", "/dicomweb/studies/{study}"): lambda t: _stow(t, in_url=True),
    ("POST", "/api/viewer/studies/{study_uid}/key-images"): lambda t: Call(
        "POST",
        f"/api/viewer/studies/{t.study}/key-images",
        json={"series_uid": t.series, "sop_uid": t.sop, "frame": 1, "note": "see"},
    ),
    ("DELETE", "/api/viewer/studies/{study_uid}/key-images/{key_image_id}"): lambda t: Call(
        "DELETE", f"/api/viewer/studies/{t.study}/key-images/{t.key_image}"
    ),
    ("POST", "/api/mdt/meetings"): lambda t: Call(
        "POST",
        "/api/mdt/meetings",
        json={
            "title": "Lung MDT",
            "date": "2026-12-05",
            "team": "Lung",
            "items": [{"issuer": "ZZB", "patient_id": t.local_id, "study_uids": [t.study]}],
        },
    ),
    ("PUT", "/api/mdt/meetings/{meeting_id}/items/{item_id}/outcome"): lambda t: Call(
        "PUT", f"/api/mdt/meetings/{t.meeting}/items/{t.item}/outcome", json={"text": "CT in 3m"}
    ),
    ("POST", "/api/mdt/meetings/{meeting_id}/items/{item_id}/outcomes"): lambda t: _outcome(t),
    ("POST", "/api/identity/link"): lambda t: Call("POST", "/api/identity/link", json=_pair(t)),
    ("POST", "/api/identity/unlink"): lambda t: Call("POST", "/api/identity/unlink", json=_pair(t)),
    ("POST", "/api/identity/sensitive"): lambda t: Call(
        "POST",
        "/api/identity/sensitive",
        json={"issuer": "ZZB", "patient_id": t.local_id, "sensitive": True},
    ),
    ("POST", "/api/identity/events/{event_pk}/reverse"): lambda t: Call(
        "POST", f"/api/identity/events/{t.event}/reverse"
    ),
    ("POST", "/api/identity/data-quality/{item_pk}/resolve"): lambda t: Call(
        "POST", f"/api/identity/data-quality/{t.work_item}/resolve"
    ),
}


def _outcome(t: Target) -> Call:
    """R32: the radiology input for Bob's item, reviewing his study."""
    return Call(
        "POST",
        f"/api/mdt/meetings/{t.meeting}/items/{t.item}/outcomes",
        json={"opinion": "Stable", "reviewed": [{"study_uid": t.study}]},
    )


def _as_get(url: Callable[[Target], str]) -> Callable[[Target], Call]:
    return lambda t: get(url(t))


PATIENT_ROUTES: dict[tuple[str, str], Callable[[Target], Call]] = {
    **{("GET", path): _as_get(url) for path, url in GET_ROUTES.items()},
    **CHANGE_ROUTES,
}

#: Routes that read no patient's data, or only the caller's own, or are not exercised here
#: (and why). Keys: (method, path).
OTHER_ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/api/break-glass"): (
        "the audited way in: it grants access to a named patient (reviewed by auditors; "
        "test_security_breakglass); used here to make a relationship"
    ),
    ("POST", "/api/break-glass/{grant_id}/review"): "auditors close a grant (no patient read)",
    ("POST", "/api/mdt/meetings/{meeting_id}/prefetch"): (
        "names a meeting, not a patient; warms only what the caller may see (test_mdt)"
    ),
    ("POST", "/api/auth/token"): "login (the caller's own session)",
    ("POST", "/api/auth/logout"): "the caller's own sessions",
    ("POST", "/api/auth/password"): "the caller's own password",
    ("POST", "/api/tokens"): "API tokens (test_security_tokens)",
    ("POST", "/api/tokens/{token_id}/revoke"): "API tokens (test_security_tokens)",
    ("POST", "/api/users"): "accounts (administrators of its trusts; test_security_admin)",
    ("POST", "/api/users/{name}/disable"): "accounts (test_security_admin)",
    ("POST", "/api/users/{name}/enable"): "accounts (test_security_admin)",
    ("POST", "/api/users/{name}/logout"): "accounts (test_security_admin)",
    ("POST", "/api/users/{name}/password"): "accounts (test_security_admin)",
    ("PUT", "/api/users/{name}/roles"): "accounts (test_security_admin)",
    ("PUT", "/api/users/{name}/trusts"): "accounts (test_security_admin)",
    ("PUT", "/api/users/{name}/national-roles"): "accounts (test_national_rbac)",
    ("OPTIONS", "/dicomweb"): "DICOMweb capabilities (no patient)",
    ("OPTIONS", "/dicomweb/"): "DICOMweb capabilities (no patient)",
    ("GET", "/api/stats"): "counts over what the caller may see",
    ("GET", "/api/trusts"): "configuration",
    ("GET", "/api/nodes"): "configuration (administrators)",
    ("GET", "/api/auth/me"): "the caller",
    ("GET", "/api/auth/oidc"): "public: the viewer's OIDC sign-in settings (no secret)",
    ("GET", "/api/users"): "accounts (administrators)",
    ("GET", "/api/users/{name}"): "an account (administrators of its trusts; test_security_admin)",
    (
        "GET",
        "/api/tokens",
    ): "API tokens, never the secret (owner or administrators; test_security_tokens)",
    ("GET", "/api/audit"): "the audit trail (auditors)",
    ("GET", "/api/audit/verify"): "the audit trail (auditors)",
    ("GET", "/api/break-glass/reasons"): "a fixed list",
    ("GET", "/api/break-glass"): "the caller's own grants (auditors: all)",
    ("GET", "/api/identity/data-quality"): "scoped list; covered by test_guarded_door",
    ("GET", "/api/identity/reports/unmatched"): "scoped list; covered by test_guarded_door",
    # Held instances name records of two trusts: regional identity administrators only, every
    # other caller gets the unknown-id answer (and an empty list), one audit record per action.
    ("GET", "/api/identity/held"): "regional administrators only; test_held_release",
    ("GET", "/api/identity/held/{held_pk}"): "regional administrators only; test_held_release",
    ("POST", "/api/identity/held/{held_pk}/release"): (
        "regional administrators only, once linked; test_held_release"
    ),
    ("POST", "/api/identity/held/{held_pk}/discard"): (
        "regional administrators only; test_held_release"
    ),
    # R28 outside studies name no consortium record until reconciled: stewards of the
    # receiving trust (or regional) only; others get an empty list or the unknown-study answer.
    **{
        (method, f"/api/identity/{path}"): "receiving trust's stewards; test_outside_imports"
        for method, path in (
            ("GET", "imports"),
            ("GET", "imports/{study_uid}"),
            ("POST", "imports/{study_uid}/reconcile"),
            ("POST", "imports/{study_uid}/reject"),
        )
    },
    # R57 study edits change which record a study is filed under (each call changes what the
    # next one sees): stewards of either record only, every other administrator gets the
    # unknown-study answer, other roles the role refusal; one audit record per record named.
    **{
        (method, f"/api/identity/{path}"): "stewards of either record; test_study_move"
        for method, path in (
            ("POST", "studies/{study_uid}/move"),
            ("POST", "studies/{study_uid}/series/{series_uid}/move"),
            ("POST", "studies/{study_uid}/accession"),
            ("GET", "studies/{study_uid}/edits"),
            ("GET", "study-edits"),
            ("POST", "study-edits/{edit_pk}/approve"),
            ("POST", "study-edits/{edit_pk}/refuse"),
            ("POST", "study-edits/{edit_pk}/reverse"),
        )
    },
    # R57 split and merge regroup series between studies of one record: its stewards only,
    # every other administrator gets the unknown-study answer, other roles the role refusal.
    **{
        ("POST", f"/api/identity/studies/{{study_uid}}/{verb}"): (
            "stewards of the study's record; test_study_split_merge"
        )
        for verb in ("split", "merge")
    },
    # R43/R44: records managers only (no patient reads); each use audited; test_retention.
    ("GET", "/api/legal-holds"): "records managers: holds as placed (test_retention)",
    ("POST", "/api/legal-holds"): "records managers; no existence oracle (test_retention)",
    ("POST", "/api/legal-holds/{hold_id}/lift"): "records managers (test_retention)",
    ("GET", "/api/retention-deletions"): "records managers of the trust (test_retention)",
    ("POST", "/api/retention-deletions/{deletion_id}/approve"): (
        "a second records manager of the record's trust (test_retention)"
    ),
    ("POST", "/api/retention-deletions/{deletion_id}/refuse"): (
        "records managers of the record's trust (test_retention)"
    ),
    # R42: records managers of the record's trust; another trust's study answers as an unknown
    # one; each study shown audited naming its patient; test_retention_schedule.
    ("GET", "/api/retention/studies/{study_uid}"): "records managers (test_retention_schedule)",
    ("GET", "/api/retention/expired"): "records managers of the trust (test_retention_schedule)",
    ("POST", "/api/retention-deletions"): (
        "records managers propose; a second one approves (test_retention_schedule)"
    ),
    ("GET", "/api/retention-flags"): "records managers of the trust (test_retention_schedule)",
    ("POST", "/api/retention-flags"): "records managers of the trust (test_retention_schedule)",
    ("POST", "/api/retention-flags/{flag_id}/remove"): (
        "records managers of the trust (test_retention_schedule)"
    ),
    (
        "GET",
        "/api/identity/hl7/messages",
    ): "administrators of the sender's trust; test_guarded_door",
    ("GET", "/fhir/metadata"): "capability statement",
    ("PUT", "/fhir/Patient"): (
        "ITI-104 feed: integration accounts of the record's trust (test_fhir_pixm_pdqm)"
    ),
    ("GET", "/fhir/.well-known/smart-configuration"): "public: SMART discovery (no patient)",
    (
        "GET",
        "/fhir/DiagnosticReport/{resource_id}",
    ): "covered by test_guarded_door (needs a report)",
    ("GET", "/api/identity/reports"): "covered by test_guarded_door (needs a report)",
    ("GET", "/api/viewer/recent"): "the caller's own recently opened patients (a query record)",
    ("GET", "/api/viewer/notices"): (
        "discrepancy notices addressed to the caller as a report's primary reporter "
        "(test_mdt_outcomes)"
    ),
    ("POST", "/api/viewer/notices/{notice_id}/acknowledge"): (
        "the addressee closes their own notice (test_mdt_outcomes)"
    ),
    ("GET", "/api/viewer/key-images/withdrawn"): (
        "the caller's own key images on withdrawn instances; test_iocm_key_images"
    ),
    (
        "GET",
        "/api/mdt/meetings",
    ): "meetings; each item without patient data unless visible (test_mdt)",
    ("GET", "/api/mdt/meetings/{meeting_id}"): "as /api/mdt/meetings, one meeting (test_mdt)",
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{sop}/bulkdata/{path}"): (
        "bulk data URIs come from metadata only; same study check as /frames"
    ),
}


#: Routes whose answer for the caller with a relationship is a redirect, not data.
REDIRECTS = {("GET", "/IHEInvokeImageDisplay"), ("GET", "/trusts/{trust}/IHEInvokeImageDisplay")}
#: List routes without the patient in the request: the result is the data, audited per query
#: without naming one patient, so only the outsider half applies.
LISTS = {("GET", "/api/patients")}


@dataclass(frozen=True)
class Caller:
    name: str
    trust: str | None
    role: str
    how: str  # the relationship with Bob, or "none"


READERS_OUT = (
    Caller("drzd", "ZZD", "clinician", "none"),
    Caller("radzd", "ZZD", "radiologist", "none"),
)
READERS_IN = (
    Caller("drzb", "ZZB", "clinician", "own trust"),
    Caller("radzb", "ZZB", "radiologist", "own trust"),
    Caller("drzc", "ZZC", "clinician", "link"),
    Caller("drza", "ZZA", "clinician", "break-glass"),
)
STEWARDS_OUT = (Caller("adminzd", "ZZD", "pacs_admin", "none"),)
STEWARDS_IN = (
    Caller("adminzb", "ZZB", "pacs_admin", "own trust"),
    Caller("root", None, "pacs_admin", "regional"),
)
COORDINATORS_OUT = (Caller("mdtzd", "ZZD", "mdt_coordinator", "none"),)
COORDINATORS_IN = (
    Caller("mdtzb", "ZZB", "mdt_coordinator", "own trust"),
    Caller("mdtzc", "ZZC", "mdt_coordinator", "link"),
)
CAST = READERS_OUT + READERS_IN + STEWARDS_OUT + STEWARDS_IN + COORDINATORS_OUT + COORDINATORS_IN

#: Identity stewardship: administrators only (a trust's, for its own records).
STEWARD_ROUTES = {
    ("POST", "/api/identity/link"),
    ("POST", "/api/identity/unlink"),
    ("POST", "/api/identity/sensitive"),
    ("POST", "/api/identity/events/{event_pk}/reverse"),
    ("POST", "/api/identity/data-quality/{item_pk}/resolve"),
}
COORDINATOR_ROUTES = {("POST", "/api/mdt/meetings")}
#: R32: the radiology input to an MDT is given by radiologists (other participants read it).
RADIOLOGIST_ROUTES = {("POST", "/api/mdt/meetings/{meeting_id}/items/{item_id}/outcomes")}
#: Stores file what the caller sends under the caller's own trust: only Bob's own trust files
#: images into his study. A linked or break-glass caller sending his ZZB Patient ID files a
#: record of its own trust, so into his study it gets the refusal with the reason (it may see
#: the record; test_held_instances), not data.
OWN_TRUST_ONLY = {("POST", "/dicomweb/studies"), ("POST", "/dicomweb/studies/{study}")}


def _outsiders(route: tuple[str, str]) -> tuple[Caller, ...]:
    if route in STEWARD_ROUTES:
        return STEWARDS_OUT
    return COORDINATORS_OUT if route in COORDINATOR_ROUTES else READERS_OUT


def _insiders(route: tuple[str, str]) -> tuple[Caller, ...]:
    if route in STEWARD_ROUTES:
        return STEWARDS_IN
    if route in COORDINATOR_ROUTES:
        return COORDINATORS_IN
    if route in OWN_TRUST_ONLY:
        return tuple(c for c in READERS_IN if c.how == "own trust")
    if route in RADIOLOGIST_ROUTES:
        return tuple(c for c in READERS_IN if c.role == "radiologist")
    return READERS_IN


def _cast(archive: Archive, client: TestClient) -> dict[str, dict[str, str]]:
    """Every caller's headers; Bob linked with a ZZC record, and a break-glass grant for ZZA's
    clinician."""
    heads = {c.name: add_user(archive, c.name, c.trust, c.role, password=None) for c in CAST}
    identity = archive.identity
    linked = PatientKey("ZZC", LINKED)
    identity.update_record(
        linked, Demographics(name="DEMO^ROBERT", birth_date="19710101", sex="M"), Change(SYSTEM)
    )
    identity.link(PatientKey("ZZB", "B7730444"), linked, Change(SYSTEM))
    r = client.post(
        "/api/break-glass",
        json={
            "reason": "emergency",
            "explanation": "unconscious in ED, no records at ZZA",
            "issuer": "ZZB",
            "patient_id": "B7730444",
        },
        headers=heads["drza"],
    )
    assert r.status_code == 201, r.text
    # ZZB's RIS files a report on Bob's study (the demo has none).
    found = identity.resolve("ZZB", "B7730444")
    assert found is not None
    accession = identity.studies({found.patient_pk})[0]["accession_number"]
    oru = (
        "MSH|^~\\&|RIS|ZZB|PACS|ZZX|20260105153000||ORU^R01^ORU_R01|B-R1|P|2.4\r"
        "PID|1||B7730444^^^ZZB^MR||DEMO^BOB||19710101|M\r"
        f"OBR|1||{accession}|CT^CT abdomen|||20260105||||||||||{accession}||||20260105||CT|F\r"
        f"OBX|1|TX|CT||{REPORT}||||||F\r"
    )
    s = archive.services
    reply = Hl7Handler(s, gate=SenderGate(s.directory, s.audit)).handle(oru, "127.0.0.1:40000")
    assert "MSA|AA" in reply, reply
    return heads


#: The text of Bob's report (his data, in answers that carry no identifier of his).
REPORT = "No abnormality of the abdomen"
#: Bob's record at ZZC, linked to his ZZB record (a record of his: his data).
LINKED = "C7770001"


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
    accession = str(study["accession_number"])
    with archive.index.read() as conn:
        report = conn.execute(
            select(schema.report.c.pk).where(schema.report.c.accession_number == accession)
        ).scalar_one()
    return Target(
        accession=accession,
        report=str(report),
        study=study["study_uid"],
        series=series["series_uid"],
        sop=rows[0].sop_instance_uid,
        patient_pk=str(found.patient_pk),
        study_pk=str(study["study_pk"]),
        local_id="B7730444",
        nhs=record["record"]["nhs_number"],
        name="BOB",
    )


def _send(client: TestClient, call: Call, auth: dict[str, str]) -> Any:
    return client.request(
        call.method,
        call.url,
        json=call.json,
        content=call.content,
        headers={**auth, **call.headers},
        follow_redirects=False,
    )


def _prepare(
    route: tuple[str, str],
    archive: Archive,
    client: TestClient,
    heads: dict[str, dict[str, str]],
    caller: Caller,
    bob: Target,
) -> Target:
    """Bob's target with what this call acts on made first (not counted in the audit check):
    a key image (the caller's own when it may make one), an MDT meeting listing Bob, an
    identity event of Bob's record, a work-queue item about him."""
    path = route[1]
    n = next(_uniq)
    bob = replace(bob, new_sop=f"2.25.7770{n}")
    if path.endswith("/key-images/{key_image_id}"):
        maker = caller.name if caller.how != "none" else "drzb"
        r = client.post(
            f"/api/viewer/studies/{bob.study}/key-images",
            json={"series_uid": bob.series, "sop_uid": bob.sop, "frame": 1},
            headers=heads[maker],
        )
        assert r.status_code == 201, r.text
        return replace(bob, key_image=str(r.json()["id"]))
    if route == ("GET", "/api/viewer/studies/{study_uid}/key-objects"):
        kos, _ = rejection_note(
            bob.local_id, "ZZB", bob.study, {bob.series: [bob.sop]}, "113005", "For Conference"
        )
        body, content_type = stow_body(kos)
        r = client.post(
            "/dicomweb/studies", content=body, headers={**heads["drzb"], **content_type}
        )
        assert r.status_code == 200, r.text
        return bob
    if route == ("GET", "/api/viewer/studies/{study_uid}/key-images"):
        r = client.post(
            f"/api/viewer/studies/{bob.study}/key-images",
            json={"series_uid": bob.series, "sop_uid": bob.sop, "frame": 1},
            headers=heads["drzb"],
        )
        assert r.status_code == 201, r.text
        return bob
    if path.endswith(("/outcome", "/outcomes", "/mdt-outcomes")):
        # Alice first, so Bob's item key differs from the meeting's (masking keeps them apart).
        call = CHANGE_ROUTES["POST", "/api/mdt/meetings"](bob)
        alice = {"issuer": "ZZB", "patient_id": "B7730021", "study_uids": []}
        call = replace(call, json={**call.json, "items": [alice, *call.json["items"]]})
        r = _send(client, call, heads["mdtzb"])
        assert r.status_code == 201, r.text
        meeting = r.json()
        (item,) = [i for i in meeting["items"] if i["patient_id"] == bob.local_id]
        bob = replace(bob, meeting=str(meeting["id"]), item=str(item["id"]))
        if route[0] == "GET" or path.endswith("/mdt-outcomes"):  # something to read: recorded
            r = _send(client, _outcome(bob), heads["radzb"])
            assert r.status_code == 201, r.text
        return bob
    identity = archive.identity
    pair = (PatientKey("ZZB", bob.local_id), PatientKey(PAIR["issuer"], PAIR["patient_id"]))
    if path == "/api/identity/link":  # each call changes something: unlinked first
        identity.unlink(*pair, Change(SYSTEM))
    if path == "/api/identity/unlink":
        identity.link(*pair, Change(SYSTEM))
    if path == "/api/identity/sensitive":
        identity.set_sensitive(pair[0], False, Change(SYSTEM))
    if path.endswith("/reverse"):
        key = PatientKey("ZZB", bob.local_id)
        identity.update_record(key, Demographics(name=f"DEMO^BOB^{n}"), Change(SYSTEM))
        return replace(bob, event=str(_last_event(archive, int(bob.patient_pk))))
    if path.endswith("/resolve"):
        item = identity.add_work_item(
            "test-item",
            f"about Bob ({n})",
            issuer="ZZB",
            local_id=bob.local_id,
            patient_pk=int(bob.patient_pk),
        )
        return replace(bob, work_item=str(item))
    return bob


def _last_event(archive: Archive, patient_pk: int) -> int:
    c = schema.identity_event.c
    with archive.index.read() as conn:
        return int(
            conn.execute(select(func.max(c.pk)).where(c.patient_pk == patient_pk)).scalar_one()
        )


def _as_if(body: bytes, missing: Target, t: Target) -> bytes:
    """The answer about nobody with each of nobody's identifiers replaced by ``t``'s: equal to
    the answer about ``t`` when the two differ only in what was asked (whole tokens only:
    nobody's values are long and distinct, so no replacement touches another)."""
    for theirs, mine in zip(missing.masks(), t.masks(), strict=True):
        pattern = rb"(?<![0-9A-Za-z.])" + re.escape(theirs.encode()) + rb"(?![0-9A-Za-z.])"
        body = re.sub(pattern, mine.encode().replace(b"\\", b"\\\\"), body)
    return body


def _ids(route: tuple[str, str]) -> str:
    return f"{route[0]} {route[1]}"


def test_every_route_is_classified(demo_client: TestClient) -> None:
    spec = demo_client.app.openapi()  # type: ignore[attr-defined]
    routes = {
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method in ops
        if method in ("get", "post", "put", "patch", "delete", "options", "head")
    }
    unclassified = routes - set(PATIENT_ROUTES) - set(OTHER_ROUTES)
    assert not unclassified, f"routes without a place in the access matrix: {unclassified}"
    assert not (set(PATIENT_ROUTES) | set(OTHER_ROUTES)) - routes, (
        "the matrix names routes that no longer exist"
    )
    assert {m for m, _ in CHANGE_ROUTES} >= {"POST", "PUT", "DELETE"}


@pytest.mark.parametrize("route", sorted(PATIENT_ROUTES), ids=_ids)
def test_no_relationship_answers_like_nobody(
    demo: Archive, demo_client: TestClient, route: tuple[str, str]
) -> None:
    heads = _cast(demo, demo_client)
    base = _bob(demo)
    for caller in _outsiders(route):
        bob = _prepare(route, demo, demo_client, heads, caller, base)
        nobody = replace(NOBODY, meeting=bob.meeting, new_sop=bob.new_sop)
        request = PATIENT_ROUTES[route]
        hidden = _send(demo_client, request(bob), heads[caller.name])
        missing = _send(demo_client, request(nobody), heads[caller.name])
        said = (caller.name, hidden.status_code, hidden.text[:300])
        assert hidden.status_code == missing.status_code, said
        assert hidden.status_code in (200, 204, 400, 403, 404), said
        assert hidden.headers.get("content-type") == missing.headers.get("content-type")
        assert "location" not in hidden.headers
        if route in LISTS:  # nobody is named in the request: the very same answer
            assert hidden.content == missing.content
        else:
            assert hidden.content == _as_if(missing.content, nobody, bob), said
        asked = _asked(request(bob))
        for secret in (bob.local_id, bob.nhs, bob.name, bob.series, bob.sop):
            if secret in asked:
                continue  # what the caller sent (a STOW names the series) may be echoed
            assert secret.encode() not in hidden.content, said
            assert all(secret not in v for v in hidden.headers.values()), said


def _asked(call: Call) -> str:
    """Everything a request carries, to tell an echo from a disclosure."""
    content = (call.content or b"").decode("latin-1")
    return f"{call.url} {call.json} {content}"


def _pixels_only(r: Any) -> bool:
    kind = r.headers.get("content-type", "")
    return kind.startswith("image/") or (
        kind.startswith("multipart/related") and "application/dicom" not in kind
    )


def _records_of_requests(demo: Archive, bob: Target, name: str) -> list[dict[str, Any]]:
    """The audit records naming Bob written for ``name``'s requests (an MDT meeting's prefetch,
    which its creation starts in the background, is audited on its own)."""
    found = demo.audit.search(patient_id=bob.local_id, actor_name=name, limit=1000)
    return [a for a in found if "prefetch" not in (a["detail"] or "")]


@pytest.mark.parametrize("route", sorted(set(PATIENT_ROUTES) - LISTS), ids=_ids)
def test_relationship_gets_the_data_and_one_audit_record(
    demo: Archive, demo_client: TestClient, route: tuple[str, str]
) -> None:
    heads = _cast(demo, demo_client)
    base = _bob(demo)
    for caller in _insiders(route):
        bob = _prepare(route, demo, demo_client, heads, caller, base)
        before = len(_records_of_requests(demo, bob, caller.name))
        r = _send(demo_client, PATIENT_ROUTES[route](bob), heads[caller.name])
        said = (caller.name, caller.how, r.status_code, r.text[:300])
        if route in REDIRECTS:
            assert r.status_code == 303, said
            assert any(v in r.headers["location"] for v in (bob.study, bob.nhs)), said
        else:
            assert r.status_code in (200, 201, 204), said
            if r.status_code != 204 and not _pixels_only(r):
                named = (
                    bob.local_id,
                    bob.nhs,
                    bob.study,
                    bob.name,
                    bob.sop,
                    bob.accession,
                    LINKED,
                    REPORT,
                )
                assert any(v.encode() in r.content for v in named), said
        if route == ("POST", "/api/mdt/meetings"):
            # Creating a meeting also starts its prefetch (as the coordinator, audited on its own
            # as a retrieve): wait for it, and count the request's own record.
            demo.services.mdt.wait_prefetch(int(r.json()["id"]), 120)
        after = _records_of_requests(demo, bob, caller.name)
        assert len(after) - before == 1, (said, [(a["action"], a["detail"]) for a in after])
