"""JSON API routes. Adapters only: they build a Principal and call the services."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from solent.domain.principal import Principal
from solent.protocols.params import MAX_PAGE
from solent.security.http import current_principal
from solent.services.access import Permission
from solent.services.registry import Services

router = APIRouter()


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


Caller = Annotated[Principal, Depends(current_principal)]


@router.get("/stats")
def stats(request: Request, caller: Caller) -> dict[str, int]:
    return _services(request).access.stats(caller)


@router.get("/trusts")
def trusts(request: Request, caller: Caller) -> list[dict[str, str]]:
    return [{"code": t.code, "name": t.name} for t in _services(request).directory.trusts()]


@router.get("/nodes")
def nodes(request: Request, caller: Caller) -> list[dict[str, Any]]:
    _services(request).access.require(caller, Permission.ADMIN, "listing DICOM nodes")
    return [
        {
            "ae_title": n.ae_title,
            "host": n.host,
            "port": n.port,
            "trust": n.trust_code,
            "allow": n.allowed,
        }
        for n in _services(request).directory.nodes()
    ]


@router.get("/patients")
def patients(
    request: Request,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_PAGE)] = 0,
) -> list[dict[str, Any]]:
    services = _services(request)
    limit = min(limit, services.settings.max_query_results)
    return services.records.patient_list(caller, limit=limit, offset=offset)


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
    services = _services(request)
    return services.records.study_list(
        caller,
        nhs_number=nhs_number,
        issuer=issuer,
        local_id=patient_id,
        limit=min(limit, services.settings.max_query_results),
        offset=offset,
    )


@router.get("/studies/{study_uid}")
def study(
    request: Request,
    caller: Caller,
    study_uid: Annotated[str, Path(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$")],
    purpose: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """One study with its patient; 404 alike for unknown and outside the relationship."""
    found: dict[str, Any] = _services(request).records.study_detail(
        caller, study_uid, purpose=purpose
    )
    return found
