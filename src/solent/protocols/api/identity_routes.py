"""JSON API of regional identity: everything for one person, links, history, work queues.

Adapters only: they name the caller and call the records service (reads) or the identity door
(changes), which decide who may and write the audit record.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from solent.domain.principal import Principal
from solent.errors import InvalidInput, NotFound
from solent.protocols.params import PathId
from solent.security.http import current_principal
from solent.services.held import HeldConflict
from solent.services.identity import IdentityRejected, PatientKey
from solent.services.outside_imports import ImportConflict
from solent.services.records import RecordService
from solent.services.registry import Services
from solent.services.study_edit import StudyEditConflict, StudyEditService

router = APIRouter()
Caller = Annotated[Principal, Depends(current_principal)]
Issuer = Annotated[str | None, Query(max_length=16)]
LocalId = Annotated[str | None, Query(max_length=64)]
NhsNumber = Annotated[str | None, Query(max_length=14)]


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _records(request: Request) -> RecordService:
    return _services(request).records


@router.get("/person")
def person(
    request: Request,
    caller: Caller,
    nhs_number: NhsNumber = None,
    issuer: Issuer = None,
    patient_id: LocalId = None,
) -> dict[str, Any]:
    """Everything for this person the caller may see: every visible linked record, retired
    IDs, studies (each with its own trust's identifiers) and their reports, newest first."""
    if not nhs_number and not (issuer and patient_id):
        raise HTTPException(
            400, "give nhs_number, or patient_id with its issuer (the trust's ODS code)"
        )
    records = _records(request)
    found = records.person(caller, nhs_number=nhs_number, issuer=issuer, local_id=patient_id)
    return records.person_view(caller, found)


@router.get("/links")
def links(
    request: Request, caller: Caller, issuer: Issuer = None, patient_id: LocalId = None
) -> list[dict[str, Any]]:
    if not issuer or not patient_id:
        raise HTTPException(400, "give patient_id and its issuer")
    return _records(request).links(caller, issuer, patient_id)


@router.get("/history")
def history(
    request: Request, caller: Caller, issuer: Issuer = None, patient_id: LocalId = None
) -> list[dict[str, Any]]:
    """Every identity change of this record: who, which message, when, before and after."""
    if not issuer or not patient_id:
        raise HTTPException(400, "give patient_id and its issuer")
    return _records(request).history(caller, issuer, patient_id)


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
    a = PatientKey(body.a.issuer, body.a.patient_id)
    b = PatientKey(body.b.issuer, body.b.patient_id)
    identity = _services(request).identity
    try:
        if linked:
            identity.link(caller, a, b)
        else:
            identity.unlink(caller, a, b)
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
    key = PatientKey(body.issuer, body.patient_id)
    _services(request).identity.set_sensitive(caller, key, body.sensitive)
    return {"patient": str(key), "sensitive": body.sensitive}


@router.post("/events/{event_pk}/reverse")
def reverse(request: Request, caller: Caller, event_pk: PathId) -> dict[str, Any]:
    """Undo a link, unlink, identifier change or demographic update (not a merge)."""
    try:
        return _services(request).identity.reverse(caller, event_pk)
    except InvalidInput as exc:
        raise HTTPException(409, str(exc)) from exc


@router.get("/data-quality")
def data_quality(
    request: Request,
    caller: Caller,
    status: Annotated[str | None, Query(pattern="^(open|resolved)$")] = "open",
) -> list[dict[str, Any]]:
    """The work queue: identity conflicts, rejected merges, held messages (scoped)."""
    return _records(request).work_queue(caller, status=status)


@router.post("/data-quality/{item_pk}/resolve")
def resolve_item(request: Request, caller: Caller, item_pk: PathId) -> dict[str, Any]:
    return _services(request).identity.resolve_work_item(caller, item_pk)


@router.get("/held")
def held_instances(
    request: Request,
    caller: Caller,
    status: Annotated[str | None, Query(pattern="^(held|released|discarded)$")] = "held",
) -> list[dict[str, Any]]:
    """Instances held for identity reconciliation (regional identity administrators)."""
    return _services(request).held.list(caller, status=status)


@router.get("/held/{held_pk}")
def held_instance(request: Request, caller: Caller, held_pk: PathId) -> dict[str, Any]:
    """One held instance: what the sender sent, why it is held, whether it can be released."""
    return _services(request).held.show(caller, held_pk)


@router.post("/held/{held_pk}/release")
def release_held(request: Request, caller: Caller, held_pk: PathId) -> dict[str, Any]:
    """File the held instance through ingest, once its UIDs belong to the person it names."""
    try:
        return _services(request).held.release(caller, held_pk)
    except HeldConflict as exc:
        raise HTTPException(409, str(exc)) from exc


class DiscardRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


@router.post("/held/{held_pk}/discard")
def discard_held(
    request: Request, caller: Caller, held_pk: PathId, body: DiscardRequest
) -> dict[str, Any]:
    """Discard the held instance (its copy is removed; the row records the decision)."""
    try:
        return _services(request).held.discard(caller, held_pk, body.reason)
    except HeldConflict as exc:
        raise HTTPException(409, str(exc)) from exc


@router.get("/reports/unmatched")
def unmatched_reports(request: Request, caller: Caller) -> list[dict[str, Any]]:
    """Reports whose (accession, issuer) names no stored study yet: kept, never dropped."""
    return _records(request).unmatched_reports(caller)


@router.get("/reports")
def reports(
    request: Request,
    caller: Caller,
    accession: Annotated[str, Query(max_length=16)],
    issuer: Annotated[str, Query(max_length=64)],
) -> list[dict[str, Any]]:
    """Every version of the report for (accession, issuer), oldest first."""
    return _records(request).report_versions(caller, accession, issuer)


@router.get("/hl7/messages")
def hl7_messages(
    request: Request,
    caller: Caller,
    status: Annotated[str | None, Query(pattern="^(received|applied|rejected|held)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """The HL7 journal, newest first (dead letters: status rejected or held); audited."""
    return _records(request).hl7_messages(caller, status=status, limit=limit)


# -- R57: studies filed under the wrong patient or order --------------------------------------

StudyUid = Annotated[str, Path(max_length=64, pattern=r"^[0-9.]+$")]


def _edits(request: Request) -> StudyEditService:
    return _services(request).study_edits


class MoveRequest(BaseModel):
    to: Identifier
    reason: str = Field(min_length=1, max_length=500)


class AccessionRequest(BaseModel):
    accession_number: str = Field(min_length=1, max_length=16)
    accession_issuer: str | None = Field(default=None, max_length=64)
    reason: str = Field(min_length=1, max_length=500)


class ReasonRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


@router.post("/studies/{study_uid}/move")
def move_study(
    request: Request, caller: Caller, study_uid: StudyUid, body: MoveRequest
) -> dict[str, Any]:
    """Move a study to another patient record: done at once within one trust's records,
    waiting for a second person's approval between two trusts' records."""
    to = PatientKey(body.to.issuer, body.to.patient_id)
    try:
        return _edits(request).move(caller, study_uid, to, body.reason)
    except StudyEditConflict as exc:
        raise HTTPException(409, str(exc)) from exc


class SeriesMoveRequest(BaseModel):
    to: Identifier
    to_study_uid: str | None = Field(default=None, max_length=64, pattern=r"^[0-9.]+$")
    reason: str = Field(min_length=1, max_length=500)


@router.post("/studies/{study_uid}/series/{series_uid}/move")
def move_series(
    request: Request,
    caller: Caller,
    study_uid: StudyUid,
    series_uid: StudyUid,
    body: SeriesMoveRequest,
) -> dict[str, Any]:
    """Move one series to another patient record: into a new study of its own, or into
    ``to_study_uid`` (a study of that record). The same two-person rule as a study move."""
    to = PatientKey(body.to.issuer, body.to.patient_id)
    try:
        return _edits(request).move_series(
            caller, study_uid, series_uid, to, body.reason, to_study_uid=body.to_study_uid
        )
    except StudyEditConflict as exc:
        raise HTTPException(409, str(exc)) from exc


SeriesUid = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9.]+$")]


class SplitRequest(BaseModel):
    series_uids: list[SeriesUid] = Field(min_length=1, max_length=1000)
    accession_number: str | None = Field(default=None, max_length=16)
    accession_issuer: str | None = Field(default=None, max_length=64)
    reason: str = Field(min_length=1, max_length=500)


@router.post("/studies/{study_uid}/split")
def split_study(
    request: Request, caller: Caller, study_uid: StudyUid, body: SplitRequest
) -> dict[str, Any]:
    """Move these series into a new study of the same patient record (a new Study Instance
    UID; the accession given, else none), at once; reversible."""
    try:
        return _edits(request).split(
            caller,
            study_uid,
            body.series_uids,
            body.reason,
            accession=body.accession_number,
            accession_issuer=body.accession_issuer,
        )
    except StudyEditConflict as exc:
        raise HTTPException(409, str(exc)) from exc


class MergeRequest(BaseModel):
    into_study_uid: str = Field(max_length=64, pattern=r"^[0-9.]+$")
    reason: str = Field(min_length=1, max_length=500)


@router.post("/studies/{study_uid}/merge")
def merge_study(
    request: Request, caller: Caller, study_uid: StudyUid, body: MergeRequest
) -> dict[str, Any]:
    """Move every series of this study into ``into_study_uid`` (a study of the same patient
    record); this study leaves every query until the merge is reversed."""
    try:
        return _edits(request).merge(caller, study_uid, body.into_study_uid, body.reason)
    except StudyEditConflict as exc:
        raise HTTPException(409, str(exc)) from exc


@router.post("/studies/{study_uid}/accession")
def correct_accession(
    request: Request, caller: Caller, study_uid: StudyUid, body: AccessionRequest
) -> dict[str, Any]:
    """Correct the study's accession number (its order and report link)."""
    try:
        return _edits(request).correct_accession(
            caller, study_uid, body.accession_number, body.accession_issuer, body.reason
        )
    except StudyEditConflict as exc:
        raise HTTPException(409, str(exc)) from exc


@router.get("/studies/{study_uid}/edits")
def study_edits(request: Request, caller: Caller, study_uid: StudyUid) -> list[dict[str, Any]]:
    """Every edit of the study (moves, splits, merges, accession corrections), oldest first."""
    return _edits(request).list(caller, study_uid=study_uid)


@router.get("/study-edits")
def all_study_edits(
    request: Request,
    caller: Caller,
    status: Annotated[str | None, Query(pattern="^(requested|done|refused)$")] = "requested",
) -> list[dict[str, Any]]:
    """Study edits of the records the caller stewards; by default the moves awaiting approval."""
    return _edits(request).list(caller, status=status)


@router.post("/study-edits/{edit_pk}/approve")
def approve_study_edit(request: Request, caller: Caller, edit_pk: PathId) -> dict[str, Any]:
    """A second, different person approves a move between two trusts' records."""
    try:
        return _edits(request).approve(caller, edit_pk)
    except StudyEditConflict as exc:
        raise HTTPException(409, str(exc)) from exc


@router.post("/study-edits/{edit_pk}/refuse")
def refuse_study_edit(
    request: Request, caller: Caller, edit_pk: PathId, body: ReasonRequest
) -> dict[str, Any]:
    try:
        return _edits(request).refuse(caller, edit_pk, body.reason)
    except StudyEditConflict as exc:
        raise HTTPException(409, str(exc)) from exc


@router.post("/study-edits/{edit_pk}/reverse")
def reverse_study_edit(
    request: Request, caller: Caller, edit_pk: PathId, body: ReasonRequest
) -> dict[str, Any]:
    """Undo a done edit: move the study back (or restore the accession), as a new edit."""
    try:
        return _edits(request).reverse(caller, edit_pk, body.reason)
    except StudyEditConflict as exc:
        raise HTTPException(409, str(exc)) from exc


# -- R28: outside studies reconciled before anyone sees them ---------------------------------


class ReconcileRequest(BaseModel):
    to: Identifier
    reason: str = Field(default="", max_length=500)


@router.get("/imports")
def outside_imports(
    request: Request,
    caller: Caller,
    status: Annotated[str | None, Query(pattern="^(held|released|discarded)$")] = "held",
) -> list[dict[str, Any]]:
    """Outside studies (IEP, PDI disc, other PACS) the caller stewards, one per study: what
    the outside sent, waiting to be reconciled to a patient record (R28)."""
    return _services(request).imports.work_list(caller, status=status)


@router.get("/imports/{study_uid}")
def outside_import(request: Request, caller: Caller, study_uid: StudyUid) -> dict[str, Any]:
    """One outside study with its instances."""
    return _services(request).imports.show(caller, study_uid)


@router.post("/imports/{study_uid}/reconcile")
def reconcile_import(
    request: Request, caller: Caller, study_uid: StudyUid, body: ReconcileRequest
) -> dict[str, Any]:
    """File the outside study under the chosen patient record; the identifiers it came with
    stay in Original Attributes Sequence of what goes out."""
    to = PatientKey(body.to.issuer, body.to.patient_id)
    try:
        return _services(request).imports.reconcile(caller, study_uid, to, body.reason)
    except ImportConflict as exc:
        raise HTTPException(409, str(exc)) from exc


@router.post("/imports/{study_uid}/reject")
def reject_import(
    request: Request, caller: Caller, study_uid: StudyUid, body: ReasonRequest
) -> dict[str, Any]:
    """Reject the outside study: its held copies are removed, the decision kept."""
    try:
        return _services(request).imports.reject(caller, study_uid, body.reason)
    except ImportConflict as exc:
        raise HTTPException(409, str(exc)) from exc
