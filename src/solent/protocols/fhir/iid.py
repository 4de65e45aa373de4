"""IHE Invoke Image Display (RAD-106): the EPR's launch into the images of a patient or study.

Each trust has its own endpoint, /trusts/{ODS}/IHEInvokeImageDisplay, and identifiers are
resolved in that trust's identifier space (an accession number has no issuer in IID). The
trust-less /IHEInvokeImageDisplay needs an assigning authority in patientID (CX.4) and cannot
take accession numbers. The launch lands in the viewer (issue 12): /viewer/#/patient/ISSUER/ID
(NHS/number for an NHS number) or /viewer/#/study/UID; several studies open the newest with the
others listed (#/study/UID?launch=UID1,UID2,...).

An EPR usually opens the URL in a plain browser, without a bearer token: the security middleware
sends such a request to the viewer (#/launch/...), which signs the user in and asks
/api/viewer/launch (below) where to go, with the same trust scoping and the same answers.
"""

from __future__ import annotations

import html
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from solent.domain import nhs_number as nhs
from solent.domain.principal import Principal
from solent.errors import InvalidInput, NotFound
from solent.security.http import current_principal
from solent.services.access import Permission
from solent.services.audit import AuditAction
from solent.services.records import Person, RecordService
from solent.services.registry import Services

router = APIRouter()
Caller = Annotated[Principal, Depends(current_principal)]
Param = Annotated[str | None, Query(max_length=1000)]
NHS_AUTHORITIES = ("NHS", "2.16.840.1.113883.2.1.4.1")


class LaunchError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


def _page(status: int, title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>",
        status_code=status,
    )


def _authority(cx: str) -> tuple[str, str]:
    """(id, assigning authority) of an HL7 CX string such as 9990000026^^^&2.16...&ISO."""
    parts = ([*cx.split("^"), "", "", "", ""])[:4]
    authority = parts[3]
    if "&" in authority:
        namespace, universal = ([*authority.split("&"), "", ""])[:2]
        authority = namespace or universal
    return parts[0], authority


def _person(
    records: RecordService, caller: Principal, trust: str | None, patient_id: str
) -> Person:
    """The person patientID (a CX) names, in the endpoint's trust when it has no CX.4."""
    value, authority = _authority(patient_id)
    if authority in NHS_AUTHORITIES:
        if not nhs.is_valid(value):
            raise LaunchError(400, f"{value} is not a valid NHS number")
        return records.person(caller, nhs_number=value, action=AuditAction.VIEW)
    authority = authority or (trust or "")
    if not authority:
        raise LaunchError(400, "patientID needs its assigning authority (CX.4) on this endpoint")
    if trust and authority != trust:
        raise LaunchError(
            400, f"patientID is issued by {authority}, but this is {trust}'s endpoint"
        )
    return records.person(caller, issuer=authority, local_id=value, action=AuditAction.VIEW)


def _launch(
    records: RecordService,
    caller: Principal,
    trust: str | None,
    request_type: str | None,
    patient_id: str | None,
    study_uid: str | None,
    accession: str | None,
) -> list[dict[str, Any]]:
    """The studies to open, newest first; only studies the caller may see, each launch audited
    by the records service naming the patient. Unknown and not visible answer alike. A STUDY
    launch that names the patient too (patientID, as EPRs send it) opens only studies of that
    patient: an accession or UID of someone else's study is not found, never shown."""
    kind = (request_type or "").upper()
    if kind == "PATIENT":
        if not patient_id:
            raise LaunchError(400, "requestType=PATIENT needs patientID (an HL7 CX string)")
        person = _person(records, caller, trust, patient_id)
        studies = records.person_studies(caller, person, "iid:PATIENT")
        if not studies:
            raise LaunchError(404, "no images of this patient that you may see")
        return studies
    if kind == "STUDY":
        named = _person(records, caller, trust, patient_id) if patient_id else None
        if study_uid:
            found = records.studies_by_uid_or_accession(
                caller,
                study_uids=[u.strip() for u in study_uid.split(",")],
                trust=trust,
                action=AuditAction.VIEW,
                of_person=named,
            )
        elif accession:
            if trust is None:
                raise LaunchError(
                    400, "accessionNumber has no issuer: launch from /trusts/{ODS}/..."
                )
            found = []
            for acc in accession.split(","):
                found += records.studies_by_uid_or_accession(
                    caller,
                    accession=(acc.strip(), trust),
                    action=AuditAction.VIEW,
                    of_person=named,
                )
        else:
            raise LaunchError(400, "requestType=STUDY needs studyUID or accessionNumber")
        if not found:
            if named is not None:
                raise LaunchError(
                    404, "no such study of the patient in patientID that you may see at this trust"
                )
            raise LaunchError(404, "no such study that you may see at this trust")
        found.sort(key=lambda s: (s["study_date"] or "", s["study_time"] or ""), reverse=True)
        return found
    raise LaunchError(400, "requestType must be PATIENT or STUDY")


def _resolve(
    request: Request,
    caller: Principal,
    trust: str | None,
    request_type: str | None,
    patient_id: str | None,
    study_uid: str | None,
    accession: str | None,
) -> tuple[str, list[dict[str, Any]]]:
    """(viewer route, the studies launched): the one decision both ways in share. Raises
    LaunchError; unknown and not visible answer alike (404)."""
    services: Services = request.app.state.services
    services.access.require(caller, Permission.READ, "launching the image display")
    if trust is not None and services.directory.trust(trust) is None:
        raise LaunchError(404, f"{trust} is not a trust here")
    try:
        studies = _launch(
            services.records, caller, trust, request_type, patient_id, study_uid, accession
        )
    except NotFound as exc:  # unknown or not visible: one answer
        raise LaunchError(404, str(exc)) from exc
    except InvalidInput as exc:
        raise LaunchError(400, str(exc)) from exc
    if (request_type or "").upper() == "PATIENT":
        value, authority = _authority(patient_id or "")
        issuer = "NHS" if authority in NHS_AUTHORITIES else authority or trust or ""
        return f"#/patient/{quote(issuer, safe='')}/{quote(value, safe='')}", studies
    href = f"#/study/{quote(studies[0]['study_uid'], safe='')}"
    if len(studies) > 1:  # newest first (the records service's order); the rest listed
        href += "?launch=" + ",".join(quote(s["study_uid"], safe="") for s in studies)
    return href, studies


def _invoke(
    request: Request,
    caller: Principal,
    trust: str | None,
    request_type: str | None,
    patient_id: str | None,
    study_uid: str | None,
    accession: str | None,
) -> Response:
    try:
        href, _ = _resolve(request, caller, trust, request_type, patient_id, study_uid, accession)
    except LaunchError as exc:
        return _page(exc.status, "Cannot open images", f"<p>{html.escape(exc.text)}</p>")
    return RedirectResponse(f"/viewer/{href}", status_code=303)


@router.get("/IHEInvokeImageDisplay")
def invoke(
    request: Request,
    caller: Caller,
    requestType: Param = None,
    patientID: Param = None,
    studyUID: Param = None,
    accessionNumber: Param = None,
    viewerType: Param = None,
    diagnosticQuality: Param = None,
    keyImagesOnly: Param = None,
) -> Response:
    return _invoke(request, caller, None, requestType, patientID, studyUID, accessionNumber)


@router.get("/trusts/{trust}/IHEInvokeImageDisplay")
def invoke_for_trust(
    request: Request,
    caller: Caller,
    trust: str,
    requestType: Param = None,
    patientID: Param = None,
    studyUID: Param = None,
    accessionNumber: Param = None,
    viewerType: Param = None,
    diagnosticQuality: Param = None,
    keyImagesOnly: Param = None,
) -> Response:
    return _invoke(request, caller, trust, requestType, patientID, studyUID, accessionNumber)


@router.get("/api/viewer/launch")
def launch(
    request: Request,
    caller: Caller,
    trust: Annotated[str | None, Query(max_length=16)] = None,
    requestType: Param = None,
    patientID: Param = None,
    studyUID: Param = None,
    accessionNumber: Param = None,
    viewerType: Param = None,
    diagnosticQuality: Param = None,
    keyImagesOnly: Param = None,
) -> dict[str, Any]:
    """The viewer's side of an IID launch (the EPR's query as it came, ``trust`` the endpoint's
    trust): where to go, and the studies launched (for the list beside a multi-study launch)."""
    try:
        href, studies = _resolve(
            request, caller, trust, requestType, patientID, studyUID, accessionNumber
        )
    except LaunchError as exc:
        raise HTTPException(exc.status, exc.text) from exc
    return {
        "href": href,
        "studies": [
            {
                "study_uid": s["study_uid"],
                "trust": s["issuer"],
                "date": s["study_date"],
                "modalities": [m for m in (s["modalities"] or "").split("\\") if m],
                "description": s["study_description"],
                "accession": s["accession_number"],
            }
            for s in studies
        ],
    }
