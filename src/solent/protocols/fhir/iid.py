"""IHE Invoke Image Display (RAD-106): the EPR's launch into the images of a patient or study.

Each trust has its own endpoint, /trusts/{ODS}/IHEInvokeImageDisplay, and identifiers are
resolved in that trust's identifier space (an accession number has no issuer in IID). The
trust-less /IHEInvokeImageDisplay needs an assigning authority in patientID (CX.4) and cannot
take accession numbers. The launch lands in the viewer (issue 12): /viewer/#/patient/ISSUER/ID
(NHS/number for an NHS number) or /viewer/#/study/UID; several studies get the list page.
"""

from __future__ import annotations

import html
from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from solent.domain import nhs_number as nhs
from solent.domain.principal import Principal
from solent.errors import InvalidInput, NotFound
from solent.security.http import current_principal
from solent.services.access import Permission
from solent.services.audit import AuditAction
from solent.services.records import RecordService
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


def _launch(
    records: RecordService,
    caller: Principal,
    trust: str | None,
    request_type: str | None,
    patient_id: str | None,
    study_uid: str | None,
    accession: str | None,
) -> list[str]:
    """The study UIDs to open; only studies the caller may see, each launch audited by the
    records service naming the patient. Unknown and not visible answer alike."""
    kind = (request_type or "").upper()
    if kind == "PATIENT":
        if not patient_id:
            raise LaunchError(400, "requestType=PATIENT needs patientID (an HL7 CX string)")
        value, authority = _authority(patient_id)
        if authority in NHS_AUTHORITIES:
            if not nhs.is_valid(value):
                raise LaunchError(400, f"{value} is not a valid NHS number")
            person = records.person(caller, nhs_number=value, action=AuditAction.VIEW)
        else:
            authority = authority or (trust or "")
            if not authority:
                raise LaunchError(
                    400, "patientID needs its assigning authority (CX.4) on this endpoint"
                )
            if trust and authority != trust:
                raise LaunchError(
                    400, f"patientID is issued by {authority}, but this is {trust}'s endpoint"
                )
            person = records.person(
                caller, issuer=authority, local_id=value, action=AuditAction.VIEW
            )
        studies = records.person_studies(caller, person, "iid:PATIENT")
        if not studies:
            raise LaunchError(404, "no images of this patient that you may see")
        return [s["study_uid"] for s in studies]
    if kind == "STUDY":
        if study_uid:
            found = records.studies_by_uid_or_accession(
                caller,
                study_uids=[u.strip() for u in study_uid.split(",")],
                trust=trust,
                action=AuditAction.VIEW,
            )
        elif accession:
            if trust is None:
                raise LaunchError(
                    400, "accessionNumber has no issuer: launch from /trusts/{ODS}/..."
                )
            found = []
            for acc in accession.split(","):
                found += records.studies_by_uid_or_accession(
                    caller, accession=(acc.strip(), trust), action=AuditAction.VIEW
                )
        else:
            raise LaunchError(400, "requestType=STUDY needs studyUID or accessionNumber")
        if not found:
            raise LaunchError(404, "no such study that you may see at this trust")
        return [s["study_uid"] for s in found]
    raise LaunchError(400, "requestType must be PATIENT or STUDY")


def _invoke(
    request: Request,
    caller: Principal,
    trust: str | None,
    request_type: str | None,
    patient_id: str | None,
    study_uid: str | None,
    accession: str | None,
) -> Response:
    services: Services = request.app.state.services
    services.access.require(caller, Permission.READ, "launching the image display")
    if trust is not None and services.directory.trust(trust) is None:
        return _page(404, "Unknown trust", f"<p>{html.escape(trust)} is not a trust here.</p>")
    try:
        uids = _launch(
            services.records, caller, trust, request_type, patient_id, study_uid, accession
        )
    except LaunchError as exc:
        return _page(exc.status, "Cannot open images", f"<p>{html.escape(exc.text)}</p>")
    except NotFound as exc:  # unknown or not visible: one answer
        return _page(404, "Cannot open images", f"<p>{html.escape(str(exc))}</p>")
    except InvalidInput as exc:
        return _page(400, "Cannot open images", f"<p>{html.escape(str(exc))}</p>")
    if (request_type or "").upper() == "PATIENT":
        value, authority = _authority(patient_id or "")
        issuer = "NHS" if authority in NHS_AUTHORITIES else authority or trust or ""
        target = f"{quote(issuer, safe='')}/{quote(value, safe='')}"
        return RedirectResponse(f"/viewer/#/patient/{target}", status_code=303)
    if len(uids) == 1:
        return RedirectResponse(f"/viewer/#/study/{quote(uids[0], safe='')}", status_code=303)
    query = urlencode([("uid", u) for u in uids])
    return RedirectResponse(f"/iid/studies?{query}", status_code=303)


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


@router.get("/iid/studies")
def study_list(
    request: Request, caller: Caller, uid: Annotated[list[str] | None, Query()] = None
) -> HTMLResponse:
    """The launch target until the viewer lands: the studies, newest first, each under its
    own trust's identifiers. Access is checked again (and audited) for every study listed."""
    services: Services = request.app.state.services
    rows = services.records.studies_by_uid_or_accession(
        caller, study_uids=uid or [], action=AuditAction.VIEW
    )
    rows.sort(key=lambda s: (s["study_date"] or "", s["study_time"] or ""), reverse=True)
    cells = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(s[k] or ''))}</td>"
            for k in (
                "study_date",
                "modalities",
                "study_description",
                "accession_number",
                "local_id",
                "issuer",
                "name",
                "study_uid",
            )
        )
        + "</tr>"
        for s in rows
    )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "Date",
            "Modality",
            "Description",
            "Accession",
            "Patient ID",
            "Issuer",
            "Name",
            "Study UID",
        )
    )
    return _page(200, "Studies", f"<table><tr>{head}</tr>{cells}</table>")
