"""JSON API routes. Adapters only: they build a Principal and call the services."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request

from solent.app import Archive
from solent.domain.principal import Principal
from solent.protocols.params import MAX_PAGE
from solent.security.http import current_principal
from solent.services.access import Permission
from solent.services.audit import AuditAction, PatientRef

router = APIRouter()


def _archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


Caller = Annotated[Principal, Depends(current_principal)]


@router.get("/stats")
def stats(request: Request, caller: Caller) -> dict[str, int]:
    return _archive(request).access.stats(caller)


@router.get("/trusts")
def trusts(request: Request, caller: Caller) -> list[dict[str, str]]:
    return [{"code": t.code, "name": t.name} for t in _archive(request).index.list_trusts()]


@router.get("/nodes")
def nodes(request: Request, caller: Caller) -> list[dict[str, Any]]:
    _archive(request).access.require(caller, Permission.ADMIN, "listing DICOM nodes")
    return [
        {
            "ae_title": n.ae_title,
            "host": n.host,
            "port": n.port,
            "trust": n.trust_code,
            "allow": n.allowed,
        }
        for n in _archive(request).index.list_nodes()
    ]


@router.get("/patients")
def patients(
    request: Request,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_PAGE)] = 0,
) -> list[dict[str, Any]]:
    archive = _archive(request)
    archive.access.require(caller, Permission.READ, "listing patients")
    rows = archive.query.list_patients(
        caller, limit=min(limit, archive.settings.max_query_results), offset=offset
    )
    archive.audit.record(
        caller, AuditAction.QUERY, detail={"api": "patients", "results": len(rows)}
    )
    return rows


@router.get("/studies")
def studies(
    request: Request,
    caller: Caller,
    nhs_number: Annotated[str | None, Query(pattern=r"^[0-9]{10}$")] = None,
    issuer: Annotated[str | None, Query(max_length=16)] = None,
    patient_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_PAGE)] = 0,
) -> list[dict[str, Any]]:
    archive = _archive(request)
    archive.access.require(caller, Permission.READ, "searching studies")
    rows = archive.query.list_studies(
        caller,
        nhs_number=nhs_number,
        issuer=issuer,
        local_id=patient_id,
        limit=min(limit, archive.settings.max_query_results),
        offset=offset,
    )
    patient = None
    if issuer and patient_id:
        patient = PatientRef(issuer, patient_id, nhs_number)
    archive.audit.record(
        caller,
        AuditAction.QUERY,
        patient=patient,
        detail={
            "api": "studies",
            "nhs_number": nhs_number,
            "issuer": issuer,
            "patient_id": patient_id,
            "results": len(rows),
        },
    )
    return rows


@router.get("/studies/{study_uid}")
def study(
    request: Request,
    caller: Caller,
    study_uid: Annotated[str, Path(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$")],
    purpose: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """One study with its patient; 403 (naming break-glass) without a legitimate relationship."""
    archive = _archive(request)
    patient = archive.access.check_study(caller, study_uid, AuditAction.VIEW, purpose=purpose)
    rows = archive.query.list_studies(
        caller, issuer=patient.issuer, local_id=patient.local_id, limit=1000
    )
    found = next((r for r in rows if r["study_uid"] == study_uid), None)
    if found is None:  # removed between the check and the read
        raise HTTPException(404, "no such study")
    archive.audit.record(
        caller, AuditAction.VIEW, patient=patient, study_uid=study_uid, purpose=purpose
    )
    return found
