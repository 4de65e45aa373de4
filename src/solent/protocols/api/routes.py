"""JSON API routes. Adapters only: they build a Principal and call the services."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from solent.app import Archive
from solent.domain.principal import Principal, PrincipalKind

router = APIRouter()


def _archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def _principal(request: Request) -> Principal:
    # Authentication arrives with the security issue; until then every caller is anonymous.
    host = request.client.host if request.client else None
    return Principal(PrincipalKind.USER, "anonymous", None, address=host)


@router.get("/stats")
def stats(request: Request) -> dict[str, int]:
    return _archive(request).query.stats(_principal(request))


@router.get("/trusts")
def trusts(request: Request) -> list[dict[str, str]]:
    return [{"code": t.code, "name": t.name} for t in _archive(request).index.list_trusts()]


@router.get("/nodes")
def nodes(request: Request) -> list[dict[str, Any]]:
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
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    return _archive(request).query.list_patients(_principal(request), limit=limit, offset=offset)


@router.get("/studies")
def studies(
    request: Request,
    nhs_number: Annotated[str | None, Query(pattern=r"^[0-9]{10}$")] = None,
    issuer: Annotated[str | None, Query(max_length=16)] = None,
    patient_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    return _archive(request).query.list_studies(
        _principal(request),
        nhs_number=nhs_number,
        issuer=issuer,
        local_id=patient_id,
        limit=limit,
        offset=offset,
    )
