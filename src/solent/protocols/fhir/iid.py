"""IHE Invoke Image Display (RAD-106): the EPR's launch into the images of a patient or study.

Each trust has its own endpoint, /trusts/{ODS}/IHEInvokeImageDisplay, and identifiers are
resolved in that trust's identifier space (an accession number has no issuer in IID). The
trust-less /IHEInvokeImageDisplay needs an assigning authority in patientID (CX.4) and cannot
take accession numbers. The launch lands in the viewer (/viewer/#/patient/... or #/study/...);
several studies at once still get the study list page.
"""

from __future__ import annotations

import html
from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from solent.app import Archive
from solent.domain import nhs_number as nhs
from solent.domain.principal import Principal
from solent.security.http import current_principal
from solent.services.access import AccessDenied, Permission
from solent.services.audit import AuditAction, PatientRef
from solent.services.identity import IdentityService

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
    archive: Archive,
    caller: Principal,
    trust: str | None,
    request_type: str | None,
    patient_id: str | None,
    study_uid: str | None,
    accession: str | None,
) -> list[str]:
    identity = IdentityService(archive.index)
    kind = (request_type or "").upper()
    if kind == "PATIENT":
        if not patient_id:
            raise LaunchError(400, "requestType=PATIENT needs patientID (an HL7 CX string)")
        value, authority = _authority(patient_id)
        if authority in NHS_AUTHORITIES:
            if not nhs.is_valid(value):
                raise LaunchError(400, f"{value} is not a valid NHS number")
            pks = identity.by_nhs_number(value)
            ref = PatientRef("NHS", value, value)
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
            found = identity.resolve(authority, value)
            if found is None:
                raise LaunchError(404, "no such patient")
            archive.access.check_patient(caller, found.issuer, found.local_id)
            pks = identity.linked_patient_pks(found.patient_pk)
            ref = PatientRef(authority, value)
        if not pks:
            raise LaunchError(404, "no such patient")
        found_uids = [s["study_uid"] for s in identity.studies(pks)]
        archive.audit.record(
            caller,
            AuditAction.VIEW,
            patient=ref,
            detail={"iid": "PATIENT", "studies": len(found_uids)},
        )
        return found_uids
    if kind == "STUDY":
        uids: list[str] = []
        if study_uid:
            for uid in study_uid.split(","):
                study = identity.study(uid.strip())
                if study is not None and (trust is None or study["trust_code"] == trust):
                    uids.append(study["study_uid"])
        elif accession:
            if trust is None:
                raise LaunchError(
                    400, "accessionNumber has no issuer: launch from /trusts/{ODS}/..."
                )
            for acc in accession.split(","):
                uids += [s["study_uid"] for s in identity.studies_by_accession(acc.strip(), trust)]
        else:
            raise LaunchError(400, "requestType=STUDY needs studyUID or accessionNumber")
        visible = []
        for uid in uids:
            try:
                archive.access.check_study(caller, uid, AuditAction.VIEW)
            except AccessDenied:
                continue
            visible.append(uid)
        if not visible:
            raise LaunchError(404, "no such study at this trust")
        for uid in visible:
            archive.audit.record(caller, AuditAction.VIEW, study_uid=uid, detail={"iid": "STUDY"})
        return visible
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
    archive: Archive = request.app.state.archive
    archive.access.require(caller, Permission.READ, "launching the image display")
    if trust is not None and archive.index.get_trust(trust) is None:
        return _page(404, "Unknown trust", f"<p>{html.escape(trust)} is not a trust here.</p>")
    try:
        uids = _launch(archive, caller, trust, request_type, patient_id, study_uid, accession)
    except LaunchError as exc:
        return _page(exc.status, "Cannot open images", f"<p>{html.escape(exc.text)}</p>")
    # Issue 12: land straight in the viewer, at the patient's timeline or the study.
    if (request_type or "").upper() == "PATIENT":
        record = _viewer_record(archive, trust, patient_id, uids)
        if record is not None:
            return RedirectResponse(f"/viewer/#/patient/{record}", status_code=303)
    elif len(uids) == 1:
        return RedirectResponse(f"/viewer/#/study/{quote(uids[0], safe='')}", status_code=303)
    query = urlencode([("uid", u) for u in uids])
    return RedirectResponse(f"/iid/studies?{query}", status_code=303)


def _viewer_record(
    archive: Archive, trust: str | None, patient_id: str | None, uids: list[str]
) -> str | None:
    """ISSUER/ID of the viewer's timeline for a PATIENT launch: the record named, or for an
    NHS number the launching trust's own record first, else the first record with studies."""
    value, authority = _authority(patient_id or "")
    if authority not in NHS_AUTHORITIES:
        return f"{quote(authority or trust or '', safe='')}/{quote(value, safe='')}"
    identity = IdentityService(archive.index)
    records: list[tuple[str, str]] = []
    for uid in uids:
        study = identity.study(uid)
        summary = identity.study_summary(int(study["pk"])) if study else None
        if summary is not None:
            records.append((str(summary["issuer"]), str(summary["local_id"])))
    records.sort(key=lambda r: r[0] != trust)
    if not records:
        return None
    return f"{quote(records[0][0], safe='')}/{quote(records[0][1], safe='')}"


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
    own trust's identifiers. Access is checked again for every study listed."""
    archive: Archive = request.app.state.archive
    identity = IdentityService(archive.index)
    rows = []
    for u in uid or []:
        study = identity.study(u)
        if study is None:
            continue
        try:
            archive.access.check_study(caller, u, AuditAction.VIEW)
        except AccessDenied:
            continue
        summary = identity.study_summary(int(study["pk"]))
        if summary is not None:
            rows.append(summary)
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
