"""JSON API of regional identity: everything for one person, links, history, work queues.

Adapters only: they name the caller, ask the access service, and call the identity service.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from solent.app import Archive
from solent.domain import nhs_number as nhs
from solent.domain.principal import Principal
from solent.errors import InvalidInput, NotFound
from solent.protocols.params import PathId
from solent.security.http import current_principal
from solent.services.access import Permission
from solent.services.audit import AuditAction, PatientRef
from solent.services.identity import Change, IdentityRejected, IdentityService, PatientKey
from solent.services.inbox import InboxService

router = APIRouter()
Caller = Annotated[Principal, Depends(current_principal)]
Issuer = Annotated[str | None, Query(max_length=16)]
LocalId = Annotated[str | None, Query(max_length=64)]
NhsNumber = Annotated[str | None, Query(max_length=14)]


def _archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def _identity(request: Request) -> IdentityService:
    return IdentityService(_archive(request).index)


def person_pks(
    archive: Archive,
    caller: Principal,
    *,
    nhs_number: str | None,
    issuer: str | None,
    patient_id: str | None,
) -> tuple[set[int], PatientRef]:
    """The records of one person, by NHS number or by any linked or retired (issuer, ID).

    A local ID without its issuer is refused: the same ID at two trusts is two patients.
    """
    identity = IdentityService(archive.index)
    if nhs_number:
        number = nhs.normalise(nhs_number)
        if not nhs.is_valid(number):
            raise HTTPException(400, f"{nhs_number!r} is not a valid NHS number (modulus 11)")
        pks = identity.by_nhs_number(number)
        if not pks:
            raise HTTPException(404, f"no record carries the traced NHS number {number}")
        return pks, PatientRef("NHS", number, number)
    if not patient_id or not issuer:
        raise HTTPException(
            400, "give nhs_number, or patient_id with its issuer (the trust's ODS code)"
        )
    found = identity.resolve(issuer, patient_id)
    if found is None:
        raise HTTPException(404, f"no patient {patient_id} issued by {issuer}")
    archive.access.check_patient(caller, found.issuer, found.local_id)
    return identity.linked_patient_pks(found.patient_pk), PatientRef(issuer, patient_id)


def _study_with_reports(archive: Archive, study: dict[str, Any]) -> dict[str, Any]:
    inbox = InboxService(archive.index, IdentityService(archive.index))
    issuer = study["accession_issuer"] or study["trust_code"]
    reports = inbox.reports(study["accession_number"], issuer) if study["accession_number"] else []
    return {**study, "reports": reports}


@router.get("/person")
def person(
    request: Request,
    caller: Caller,
    nhs_number: NhsNumber = None,
    issuer: Issuer = None,
    patient_id: LocalId = None,
) -> dict[str, Any]:
    """Everything for this person: every linked record, retired IDs, studies (each with its
    own trust's identifiers) and their reports, newest first."""
    archive = _archive(request)
    archive.access.require(caller, Permission.READ, "viewing a patient")
    pks, ref = person_pks(
        archive, caller, nhs_number=nhs_number, issuer=issuer, patient_id=patient_id
    )
    view = _identity(request).person(pks)
    view["studies"] = [_study_with_reports(archive, s) for s in view["studies"]]
    idents = [(r["issuer"], r["local_id"]) for r in view["records"]]
    view["orders"] = InboxService(archive.index, _identity(request)).orders(idents)
    archive.audit.record(
        caller,
        AuditAction.QUERY,
        patient=ref,
        detail={"api": "identity/person", "records": len(pks), "studies": len(view["studies"])},
    )
    return view


@router.get("/links")
def links(
    request: Request, caller: Caller, issuer: Issuer = None, patient_id: LocalId = None
) -> list[dict[str, Any]]:
    archive = _archive(request)
    archive.access.require(caller, Permission.READ, "viewing patient links")
    found = _resolve(request, issuer, patient_id)
    archive.access.check_patient(caller, found[0], found[1])
    return _identity(request).links_of(found[2])


@router.get("/history")
def history(
    request: Request, caller: Caller, issuer: Issuer = None, patient_id: LocalId = None
) -> list[dict[str, Any]]:
    """Every identity change of this record: who, which message, when, before and after."""
    archive = _archive(request)
    archive.access.require(caller, Permission.READ, "viewing identity history")
    found = _resolve(request, issuer, patient_id)
    archive.access.check_patient(caller, found[0], found[1])
    return _identity(request).history(found[2])


def _resolve(request: Request, issuer: str | None, patient_id: str | None) -> tuple[str, str, int]:
    if not issuer or not patient_id:
        raise HTTPException(400, "give patient_id and its issuer")
    found = _identity(request).resolve(issuer, patient_id)
    if found is None:
        raise HTTPException(404, f"no patient {patient_id} issued by {issuer}")
    return found.issuer, found.local_id, found.patient_pk


class Identifier(BaseModel):
    issuer: str = Field(max_length=16)
    patient_id: str = Field(max_length=64)


class LinkRequest(BaseModel):
    a: Identifier
    b: Identifier


@router.post("/link")
def link(request: Request, caller: Caller, body: LinkRequest) -> dict[str, Any]:
    """Administrator link of two records (what A24 does)."""
    return _set_link(request, caller, body, linked=True)


@router.post("/unlink")
def unlink(request: Request, caller: Caller, body: LinkRequest) -> dict[str, Any]:
    """Administrator unlink (what A37 does); also blocks the NHS-number link of the pair."""
    return _set_link(request, caller, body, linked=False)


def _set_link(
    request: Request, caller: Principal, body: LinkRequest, *, linked: bool
) -> dict[str, Any]:
    archive = _archive(request)
    archive.access.require(caller, Permission.ADMIN, "linking patient records")
    a = PatientKey(body.a.issuer, body.a.patient_id)
    b = PatientKey(body.b.issuer, body.b.patient_id)
    identity = _identity(request)
    try:
        if linked:
            identity.link(a, b, Change(caller))
        else:
            identity.unlink(a, b, Change(caller))
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except IdentityRejected as exc:
        raise HTTPException(409, str(exc)) from exc
    return {"a": str(a), "b": str(b), "status": "linked" if linked else "unlinked"}


class SensitiveRequest(BaseModel):
    issuer: str = Field(max_length=16)
    patient_id: str = Field(max_length=64)
    sensitive: bool


@router.post("/sensitive")
def sensitive(request: Request, caller: Caller, body: SensitiveRequest) -> dict[str, Any]:
    """Set or clear the PDS S-flag of a record: contact details are then never shown."""
    archive = _archive(request)
    archive.access.require(caller, Permission.ADMIN, "marking a patient sensitive")
    key = PatientKey(body.issuer, body.patient_id)
    _identity(request).set_sensitive(key, body.sensitive, Change(caller))
    return {"patient": str(key), "sensitive": body.sensitive}


@router.post("/events/{event_pk}/reverse")
def reverse(request: Request, caller: Caller, event_pk: PathId) -> dict[str, Any]:
    """Undo a link, unlink, identifier change or demographic update (not a merge)."""
    archive = _archive(request)
    archive.access.require(caller, Permission.ADMIN, "reversing identity changes")
    try:
        _identity(request).reverse(event_pk, caller)
    except InvalidInput as exc:
        raise HTTPException(409, str(exc)) from exc
    return {"reversed": event_pk}


@router.get("/data-quality")
def data_quality(
    request: Request,
    caller: Caller,
    status: Annotated[str | None, Query(pattern="^(open|resolved)$")] = "open",
) -> list[dict[str, Any]]:
    """The work queue: identity conflicts, rejected merges, held messages."""
    archive = _archive(request)
    archive.access.require(caller, Permission.READ, "viewing the data-quality queue")
    return _identity(request).work_queue(status=status)


@router.post("/data-quality/{item_pk}/resolve")
def resolve_item(request: Request, caller: Caller, item_pk: PathId) -> dict[str, Any]:
    archive = _archive(request)
    archive.access.require(caller, Permission.ADMIN, "resolving data-quality items")
    _identity(request).resolve_work_item(item_pk, caller)
    return {"resolved": item_pk}


@router.get("/reports/unmatched")
def unmatched_reports(request: Request, caller: Caller) -> list[dict[str, Any]]:
    """Reports whose (accession, issuer) names no stored study yet: kept, never dropped."""
    archive = _archive(request)
    archive.access.require(caller, Permission.READ, "viewing unmatched reports")
    return InboxService(archive.index, _identity(request)).unmatched_reports()


@router.get("/reports")
def reports(
    request: Request,
    caller: Caller,
    accession: Annotated[str, Query(max_length=16)],
    issuer: Annotated[str, Query(max_length=64)],
) -> list[dict[str, Any]]:
    """Every version of the report for (accession, issuer), oldest first."""
    archive = _archive(request)
    archive.access.require(caller, Permission.READ, "viewing reports")
    return InboxService(archive.index, _identity(request)).reports(accession, issuer)


@router.get("/hl7/messages")
def hl7_messages(
    request: Request,
    caller: Caller,
    status: Annotated[str | None, Query(pattern="^(received|applied|rejected|held)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """The HL7 journal, newest first (dead letters: status rejected or held)."""
    archive = _archive(request)
    archive.access.require(caller, Permission.ADMIN, "viewing the HL7 journal")
    return InboxService(archive.index, _identity(request)).messages(status=status, limit=limit)
