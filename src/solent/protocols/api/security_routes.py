"""JSON API of security: login, users, the audit trail, break-glass. Adapters only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from solent.domain.principal import Principal
from solent.security import auditformats
from solent.security.authn import AuthenticationFailed, Authenticator
from solent.security.http import FailureThrottle, current_principal
from solent.security.users import UserService, parse_roles
from solent.services.access import BREAK_GLASS_REASONS, Permission
from solent.services.audit import AuditAction
from solent.services.registry import Services

router = APIRouter()
Caller = Annotated[Principal, Depends(current_principal)]


def _archive(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _users(request: Request) -> UserService:
    users: UserService = request.app.state.users
    return users


# -- login ------------------------------------------------------------------------------------


@router.post("/auth/token")
def login(request: Request, caller: Caller) -> dict[str, Any]:
    """Exchange HTTP Basic credentials for a short-lived bearer token."""
    authenticator: Authenticator = request.app.state.authenticator
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        issued = _users(request).issue(caller.name)  # refresh: a new token for the same user
    else:
        try:
            name, password = authenticator.basic(credential, caller.address)
        except AuthenticationFailed as exc:
            raise HTTPException(401, str(exc)) from exc
        throttle: FailureThrottle = request.app.state.login_throttle
        if throttle.blocked(name):
            raise HTTPException(
                429,
                "too many failed logins for this user; wait a few seconds",
                headers={"Retry-After": "5"},
            )
        found = _users(request).login(name, password, caller.address)
        if found is None:
            throttle.failed(name)
            raise HTTPException(
                401,
                "wrong user name or password, or the user is disabled",
                headers={"WWW-Authenticate": 'Basic realm="solent"'},
            )
        issued = found
    assert issued.expires_at is not None
    return {
        "access_token": issued.token,
        "token_type": "bearer",
        "expires_at": issued.expires_at.isoformat(),
    }


@router.get("/auth/me")
def me(request: Request, caller: Caller) -> dict[str, Any]:
    access = _archive(request).access
    return {
        "kind": caller.kind.value,
        "name": caller.name,
        "trust": caller.trust,
        "trusts": sorted(access.scope(caller).trusts),
        "roles": sorted(caller.roles),
        "permissions": sorted(p.value for p in access.permissions(caller)),
    }


# -- users ------------------------------------------------------------------------------------


class NewUser(BaseModel):
    name: str = Field(max_length=64)
    trust: str = Field(max_length=16)
    roles: list[str] = Field(min_length=1, max_length=6)
    password: str | None = Field(None, max_length=1024)
    other_trusts: list[str] = Field(default_factory=list, max_length=32)


def _user_json(row: Any) -> dict[str, Any]:
    return {
        "name": row.name,
        "trust": row.trust,
        "other_trusts": list(row.other_trusts),
        "roles": list(row.roles),
        "disabled": row.disabled,
        "password": row.password_hash is not None,
    }


@router.get("/users")
def list_users(request: Request, caller: Caller) -> list[dict[str, Any]]:
    _archive(request).access.require(caller, Permission.ADMIN, "managing users")
    return [_user_json(r) for r in _users(request).list()]


@router.post("/users", status_code=201)
def add_user(request: Request, caller: Caller, body: NewUser) -> dict[str, Any]:
    _archive(request).access.require(caller, Permission.ADMIN, "managing users")
    row = _users(request).add(
        caller,
        body.name,
        body.trust,
        parse_roles(body.roles),
        body.password,
        tuple(body.other_trusts),
    )
    return _user_json(row)


@router.post("/users/{name}/disable")
def disable_user(request: Request, caller: Caller, name: str) -> dict[str, str]:
    _archive(request).access.require(caller, Permission.ADMIN, "managing users")
    _users(request).disable(caller, name)
    return {"name": name, "status": "disabled"}


# -- audit ------------------------------------------------------------------------------------


@router.get("/audit")
def search_audit(
    request: Request,
    caller: Caller,
    patient_id: Annotated[str | None, Query(max_length=64)] = None,
    issuer: Annotated[str | None, Query(max_length=16)] = None,
    nhs_number: Annotated[str | None, Query(pattern=r"^[0-9]{10}$")] = None,
    user: Annotated[str | None, Query(max_length=200)] = None,
    study_uid: Annotated[str | None, Query(max_length=64, pattern=r"^[0-9.]+$")] = None,
    action: Annotated[str | None, Query(max_length=40)] = None,
    since: Annotated[str | None, Query(max_length=32)] = None,
    until: Annotated[str | None, Query(max_length=32)] = None,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    format: Annotated[str, Query(pattern="^(json|fhir)$")] = "json",
) -> Any:
    """Search the trail by patient and/or user (auditor role); the search is audited itself."""
    archive = _archive(request)
    archive.access.require(caller, Permission.AUDIT, "reading the audit trail")
    criteria = {
        "patient_id": patient_id,
        "patient_issuer": issuer,
        "nhs_number": nhs_number,
        "actor_name": user,
        "study_uid": study_uid,
        "action": action,
        "since": since,
        "until": until,
    }
    rows = archive.audit.search(
        **criteria, after_seq=after, limit=min(limit, archive.settings.max_query_results)
    )
    archive.audit.record(
        caller,
        AuditAction.AUDIT_LOG_USED,
        detail={k: v for k, v in criteria.items() if v} | {"results": len(rows)},
    )
    if format == "fhir":
        return auditformats.fhir_bundle(rows)
    return rows


@router.get("/audit/verify")
def verify_audit(request: Request, caller: Caller) -> dict[str, Any]:
    archive = _archive(request)
    archive.access.require(caller, Permission.AUDIT, "verifying the audit trail")
    report = archive.audit.verify()
    archive.audit.record(caller, AuditAction.AUDIT_LOG_USED, detail={"verify": report.intact})
    return {"intact": report.intact, "records": report.records, "problems": report.problems}


# -- break-glass --------------------------------------------------------------------------------


class BreakGlassRequest(BaseModel):
    reason: str = Field(max_length=40)
    explanation: str = Field(max_length=2000)
    study_uid: str | None = Field(None, max_length=64, pattern=r"^[0-9.]+$")
    issuer: str | None = Field(None, max_length=16)
    patient_id: str | None = Field(None, max_length=64)


class Review(BaseModel):
    note: str = Field(min_length=1, max_length=2000)


@router.get("/break-glass/reasons")
def break_glass_reasons(caller: Caller) -> dict[str, str]:
    return BREAK_GLASS_REASONS


@router.post("/break-glass", status_code=201)
def break_glass(request: Request, caller: Caller, body: BreakGlassRequest) -> dict[str, Any]:
    grant = _archive(request).access.break_glass(
        caller,
        reason_code=body.reason,
        reason_text=body.explanation,
        study_uid=body.study_uid,
        issuer=body.issuer,
        local_id=body.patient_id,
    )
    return {
        "grant": grant.id,
        "patient": {"issuer": grant.patient.issuer, "patient_id": grant.patient.local_id},
        "expires_at": grant.expires_at.isoformat(),
        "warning": grant.warning,
    }


@router.get("/break-glass")
def list_break_glass(
    request: Request,
    caller: Caller,
    unreviewed: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    rows = _archive(request).access.grants(caller, unreviewed_only=unreviewed, limit=limit)
    return [
        {
            "grant": g.id,
            "user": g.user_name,
            "user_trust": g.user_trust,
            "patient": {"issuer": g.patient_issuer, "patient_id": g.patient_id},
            "nhs_number": g.nhs_number,
            "reason": g.reason_code,
            "explanation": g.reason_text,
            "granted_at": g.granted_at.isoformat(),
            "expires_at": g.expires_at.isoformat(),
            "reviewed_at": g.reviewed_at.isoformat() if g.reviewed_at else None,
            "reviewed_by": g.reviewed_by,
        }
        for g in rows
    ]


@router.post("/break-glass/{grant_id}/review")
def review_break_glass(
    request: Request, caller: Caller, grant_id: int, body: Review
) -> dict[str, Any]:
    _archive(request).access.review(caller, grant_id, body.note)
    return {"grant": grant_id, "reviewed": True}
