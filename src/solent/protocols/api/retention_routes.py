"""JSON API of records retention (R42, R43, R44): each study's retention date and the expired
ones, pathway flags, legal holds and retention deletions.

Adapters only: they name the caller and call the retention service, which decides who may
(records managers; a second person for a deletion) and writes the audit record.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from solent.domain.principal import Principal
from solent.protocols.params import PathId
from solent.security.http import current_principal
from solent.services.registry import Services
from solent.services.retention import RetentionConflict, RetentionService
from solent.services.retention_schedule import RetentionSchedule

router = APIRouter()
Caller = Annotated[Principal, Depends(current_principal)]


def _retention(request: Request) -> RetentionService:
    services: Services = request.app.state.services
    return services.retention


def _schedule(request: Request) -> RetentionSchedule:
    services: Services = request.app.state.services
    return services.retention_schedule


class HoldTarget(BaseModel):
    """One of: study_uid; issuer with patient_id; nhs_number."""

    study_uid: str | None = Field(default=None, max_length=64)
    issuer: str | None = Field(default=None, max_length=16)
    patient_id: str | None = Field(default=None, max_length=64)
    nhs_number: str | None = Field(default=None, max_length=14)


class HoldRequest(BaseModel):
    reason: str = Field(max_length=2000)
    reference: str = Field(max_length=200)
    targets: list[HoldTarget] = Field(min_length=1, max_length=1000)


class Decision(BaseModel):
    reason: str = Field(default="", max_length=2000)


@router.get("/legal-holds")
def legal_holds(
    request: Request, caller: Caller, active: Annotated[bool, Query()] = True
) -> list[dict[str, Any]]:
    """Legal holds, newest first (active ones only unless active=false)."""
    return _retention(request).holds(caller, active_only=active)


@router.post("/legal-holds", status_code=201)
def place_legal_holds(request: Request, caller: Caller, body: HoldRequest) -> list[dict[str, Any]]:
    """Place a hold on each target (a study, a patient record, a person by NHS number); several
    targets under one reference are a cohort."""
    return _retention(request).place_holds(
        caller,
        reason=body.reason,
        reference=body.reference,
        targets=[t.model_dump(exclude_none=True) for t in body.targets],
    )


@router.post("/legal-holds/{hold_id}/lift")
def lift_legal_hold(
    request: Request, caller: Caller, hold_id: PathId, body: Decision
) -> dict[str, Any]:
    try:
        return _retention(request).lift_hold(caller, hold_id, body.reason)
    except RetentionConflict as exc:
        raise HTTPException(409, str(exc)) from exc


@router.get("/retention-deletions")
def retention_deletions(
    request: Request,
    caller: Caller,
    status: Annotated[str | None, Query(pattern="^(pending|approved|refused)$")] = "pending",
) -> list[dict[str, Any]]:
    """Retention deletions (IOCM 113039 notes) of the caller's trusts' records."""
    return _retention(request).deletions(caller, status=status)


@router.post("/retention-deletions/{deletion_id}/approve")
def approve_retention_deletion(
    request: Request, caller: Caller, deletion_id: PathId, body: Decision | None = None
) -> dict[str, Any]:
    """Withdraw what the deletion lists: a second person, no legal hold on the study."""
    try:
        return _retention(request).approve(caller, deletion_id, body.reason if body else "")
    except RetentionConflict as exc:
        raise HTTPException(409, str(exc)) from exc


@router.post("/retention-deletions/{deletion_id}/refuse")
def refuse_retention_deletion(
    request: Request, caller: Caller, deletion_id: PathId, body: Decision
) -> dict[str, Any]:
    """Discard the deletion: nothing is withdrawn (the note stays stored)."""
    try:
        return _retention(request).refuse(caller, deletion_id, body.reason)
    except RetentionConflict as exc:
        raise HTTPException(409, str(exc)) from exc


# -- R42: retention dates, expired studies, pathway flags -------------------------------------


class Proposal(BaseModel):
    study_uids: list[str] = Field(min_length=1, max_length=1000)
    reason: str = Field(max_length=2000)


class FlagRequest(BaseModel):
    """A pathway flag on one of: study_uid; issuer with patient_id (the person's studies)."""

    kind: str = Field(max_length=16)
    study_uid: str | None = Field(default=None, max_length=64)
    issuer: str | None = Field(default=None, max_length=16)
    patient_id: str | None = Field(default=None, max_length=64)
    since: str | None = Field(default=None, max_length=10)
    note: str = Field(max_length=2000)


@router.get("/retention/studies/{study_uid}")
def study_retention(request: Request, caller: Caller, study_uid: str) -> dict[str, Any]:
    """The study's retention date, the rule that sets it, and every rule and input (why)."""
    return _schedule(request).explain(caller, study_uid)


@router.get("/retention/expired")
def expired_studies(
    request: Request,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Studies whose retention ran out, under no legal hold and not proposed yet; pass
    ``next_after`` as ``after`` for the next page."""
    return _schedule(request).expired(caller, limit=limit, after=after)


@router.post("/retention-deletions", status_code=201)
def propose_retention_deletions(
    request: Request, caller: Caller, body: Proposal
) -> list[dict[str, Any]]:
    """Propose expired studies for deletion: one pending retention deletion (113039) each,
    for a second records manager to approve; all or none."""
    try:
        return _schedule(request).propose(caller, body.study_uids, body.reason)
    except RetentionConflict as exc:
        raise HTTPException(409, str(exc)) from exc


@router.get("/retention-flags")
def retention_flags(
    request: Request, caller: Caller, active: Annotated[bool, Query()] = True
) -> list[dict[str, Any]]:
    return _schedule(request).flags(caller, active_only=active)


@router.post("/retention-flags", status_code=201)
def set_retention_flag(request: Request, caller: Caller, body: FlagRequest) -> dict[str, Any]:
    """Flag a study or a patient record as on a pathway kept longer (cancer, transplant,
    cjd, maternity, screening, clinical_trial)."""
    target = body.model_dump(include={"study_uid", "issuer", "patient_id"}, exclude_none=True)
    return _schedule(request).set_flag(
        caller, kind=body.kind, target=target, note=body.note, since=body.since
    )


@router.post("/retention-flags/{flag_id}/remove")
def remove_retention_flag(
    request: Request, caller: Caller, flag_id: PathId, body: Decision
) -> dict[str, Any]:
    try:
        return _schedule(request).remove_flag(caller, flag_id, body.reason)
    except RetentionConflict as exc:
        raise HTTPException(409, str(exc)) from exc
