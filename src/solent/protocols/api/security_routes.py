"""JSON API of security: login, users, the audit trail, break-glass. Adapters only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from solent.domain.principal import Principal
from solent.errors import AlreadyExists
from solent.protocols.params import MAX_ID, PathId
from solent.security import auditformats
from solent.security.authn import AuthenticationFailed, Authenticator
from solent.security.http import current_principal
from solent.security.oidc import OidcUnavailable
from solent.security.throttle import LoginBusy, LoginThrottled
from solent.security.users import (
    IssuedToken,
    SessionEnded,
    UserService,
    parse_national_role,
    parse_roles,
)
from solent.services.access import BREAK_GLASS_REASONS
from solent.services.registry import Services

router = APIRouter()
Caller = Annotated[Principal, Depends(current_principal)]


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _users(request: Request) -> UserService:
    services: Services = request.app.state.services
    return services.users


def _token_json(issued: IssuedToken) -> dict[str, Any]:
    assert issued.expires_at is not None
    return {
        "access_token": issued.token,
        "token_type": "bearer",
        "expires_at": issued.expires_at.isoformat(),
    }


# -- login ------------------------------------------------------------------------------------


@router.post("/auth/token")
def login(
    request: Request,
    caller: Caller,
    org: Annotated[str | None, Query(max_length=16, pattern=r"^[A-Za-z0-9_-]+$")] = None,
) -> dict[str, Any]:
    """Exchange HTTP Basic credentials for a short-lived bearer token, or refresh a bearer token
    (never beyond the session's absolute lifetime, SOLENT_SESSION_MAX_HOURS).

    ``org`` (R33): the organisation (ODS code) the session acts for; required of an account
    with national roles at several organisations. 403 when the account holds no role there."""
    authenticator: Authenticator = request.app.state.authenticator
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        try:
            return _token_json(_users(request).refresh(credential.strip()))
        except SessionEnded as exc:
            raise HTTPException(
                401, str(exc), headers={"WWW-Authenticate": 'Basic realm="solent"'}
            ) from exc
    try:
        name, password = authenticator.basic(credential, caller.address)
    except AuthenticationFailed as exc:
        raise HTTPException(401, str(exc)) from exc
    try:
        found = _users(request).login(name, password, caller.address, org)
    except LoginThrottled as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after)}) from exc
    except LoginBusy as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after)}) from exc
    if found is None:
        raise HTTPException(
            401,
            "wrong user name or password, or the user is disabled",
            headers={"WWW-Authenticate": 'Basic realm="solent"'},
        )
    return _token_json(found)


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


@router.get("/auth/oidc")
def oidc_config(request: Request) -> dict[str, Any]:
    """Public (no token yet): whether the viewer offers OIDC sign-in, and where to send the
    user. Only what the IdP publishes anyway; a public client has no secret."""
    services = _services(request)
    s = services.settings
    oidc = services.authenticator.oidc
    if not s.oidc_client_id or oidc is None:
        return {"enabled": False}
    try:
        endpoints = oidc.endpoints.endpoints()
    except OidcUnavailable as exc:  # the viewer then offers password sign-in only
        raise HTTPException(503, f"single sign-on is unavailable: {exc}") from exc
    return {
        "enabled": True,
        "issuer": s.oidc_issuer,
        "authorization_endpoint": endpoints.authorization_endpoint,
        "token_endpoint": endpoints.token_endpoint,
        "client_id": s.oidc_client_id,
        "scopes": s.oidc_scopes,
        "display_name": s.oidc_display_name,
        "token": s.oidc_viewer_token,
    }


@router.post("/auth/password")
def change_password(request: Request, caller: Caller, body: PasswordChange) -> dict[str, str]:
    """Change one's own password; every session and API token of the account ends."""
    try:
        _users(request).change_own_password(
            caller, body.current_password, body.new_password, caller.address
        )
    except LoginThrottled as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after)}) from exc
    except LoginBusy as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after)}) from exc
    return {"name": caller.name, "status": "password changed; log in again"}


@router.post("/auth/logout")
def logout_everywhere(request: Request, caller: Caller) -> dict[str, str]:
    """End every session and API token of the caller's account."""
    _users(request).end_sessions(caller, caller.name)
    return {"name": caller.name, "status": "every session ended"}


@router.get("/auth/me")
def me(request: Request, caller: Caller) -> dict[str, Any]:
    access = _services(request).access
    return {
        "kind": caller.kind.value,
        "name": caller.name,
        "trust": caller.trust,
        "trusts": sorted(access.scope(caller).trusts),
        "roles": sorted(caller.roles),
        "permissions": sorted(p.value for p in access.permissions(caller)),
        "national_role": _national_json(caller),
    }


def _national_json(caller: Principal) -> dict[str, Any] | None:
    """The national RBAC role the session acts under (R33), or None."""
    found = caller.national
    if found is None:
        return None
    return {
        "org": found.org,
        "job_role": found.job_role,
        "person_role_id": found.role.person_role_id,
        "activities": sorted(found.activities),
    }


# -- users (a trust administrator manages its own trust's users only) ---------------------------

UserName = Annotated[str, Path(max_length=64)]


class NewUser(BaseModel):
    name: str = Field(max_length=64)
    trust: str = Field(max_length=16)
    roles: list[str] = Field(min_length=1, max_length=6)
    password: str | None = Field(None, max_length=1024)
    other_trusts: list[str] = Field(default_factory=list, max_length=32)


class Roles(BaseModel):
    roles: list[str] = Field(min_length=1, max_length=6)


class Trusts(BaseModel):
    trust: str = Field(max_length=16)
    other_trusts: list[str] = Field(default_factory=list, max_length=32)


class NationalRoles(BaseModel):
    """National RBAC roles of a local account (R33): ``ORG:R-CODE[:B0000+B0001]`` each."""

    national_roles: list[str] = Field(max_length=32)


class NewPassword(BaseModel):
    password: str = Field(max_length=1024)


class NewApiToken(BaseModel):
    user: str = Field(max_length=64)
    label: str = Field("", max_length=200)
    days: int | None = Field(None, ge=1, le=3650)


def _user_json(row: Any) -> dict[str, Any]:
    return {
        "name": row.name,
        "trust": row.trust,
        "other_trusts": list(row.other_trusts),
        "roles": list(row.roles),
        "disabled": row.disabled,
        "password": row.password_hash is not None,
        "national_roles": [
            {"org": r.org, "job_role": r.job_role, "activities": sorted(r.activities)}
            for r in row.national_roles
        ],
    }


def _api_token_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "user": row.user_name,
        "label": row.label,
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "revoked": row.revoked,
    }


@router.get("/users")
def list_users(request: Request, caller: Caller) -> list[dict[str, Any]]:
    """The users the caller administers (its own trusts'; every trust for a regional admin)."""
    return [_user_json(r) for r in _users(request).list(caller)]


@router.post("/users", status_code=201)
def add_user(request: Request, caller: Caller, body: NewUser) -> dict[str, Any]:
    try:
        row = _users(request).add(
            caller,
            body.name,
            body.trust,
            parse_roles(body.roles),
            body.password,
            tuple(body.other_trusts),
        )
    except AlreadyExists as exc:
        raise HTTPException(409, str(exc)) from exc
    return _user_json(row)


@router.get("/users/{name}")
def get_user(request: Request, caller: Caller, name: UserName) -> dict[str, Any]:
    return _user_json(_users(request).find(caller, name))


@router.put("/users/{name}/roles")
def set_roles(request: Request, caller: Caller, name: UserName, body: Roles) -> dict[str, Any]:
    return _user_json(_users(request).set_roles(caller, name, parse_roles(body.roles)))


@router.put("/users/{name}/trusts")
def set_trusts(request: Request, caller: Caller, name: UserName, body: Trusts) -> dict[str, Any]:
    row = _users(request).set_trusts(caller, name, body.trust, tuple(body.other_trusts))
    return _user_json(row)


@router.put("/users/{name}/national-roles")
def set_national_roles(
    request: Request, caller: Caller, name: UserName, body: NationalRoles
) -> dict[str, Any]:
    """Replace a user's national RBAC roles (an empty list removes them)."""
    roles = tuple(parse_national_role(v) for v in body.national_roles)
    return _user_json(_users(request).set_national_roles(caller, name, roles))


@router.post("/users/{name}/password")
def reset_password(
    request: Request, caller: Caller, name: UserName, body: NewPassword
) -> dict[str, str]:
    """Set a user's password; their sessions and API tokens end."""
    try:
        _users(request).set_password(caller, name, body.password)
    except LoginBusy as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after)}) from exc
    return {"name": name, "status": "password set; sessions ended"}


@router.post("/users/{name}/disable")
def disable_user(request: Request, caller: Caller, name: UserName) -> dict[str, str]:
    _users(request).disable(caller, name)
    return {"name": name, "status": "disabled"}


@router.post("/users/{name}/enable")
def enable_user(request: Request, caller: Caller, name: UserName) -> dict[str, str]:
    _users(request).enable(caller, name)
    return {"name": name, "status": "enabled"}


@router.post("/users/{name}/logout")
def end_user_sessions(request: Request, caller: Caller, name: UserName) -> dict[str, str]:
    """End every session and API token of a user (e.g. a lost laptop)."""
    _users(request).end_sessions(caller, name)
    return {"name": name, "status": "every session ended"}


# -- API tokens ---------------------------------------------------------------------------------


@router.get("/tokens")
def list_tokens(
    request: Request,
    caller: Caller,
    user: Annotated[str | None, Query(max_length=64)] = None,
) -> list[dict[str, Any]]:
    """API tokens (never the secret) of the users the caller administers, or the caller's own."""
    return [_api_token_json(r) for r in _users(request).list_tokens(caller, user)]


@router.post("/tokens", status_code=201)
def create_token(request: Request, caller: Caller, body: NewApiToken) -> dict[str, Any]:
    """A service API token for a user the caller administers; shown once."""
    issued = _users(request).issue_api_token(caller, body.user, body.label, body.days)
    return {
        "id": issued.id,
        "user": body.user,
        "token": issued.token,
        "expires_at": issued.expires_at.isoformat() if issued.expires_at else None,
    }


@router.post("/tokens/{token_id}/revoke")
def revoke_token(request: Request, caller: Caller, token_id: PathId) -> dict[str, Any]:
    return _api_token_json(_users(request).revoke_token(caller, token_id))


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
    after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    format: Annotated[str, Query(pattern="^(json|fhir)$")] = "json",
) -> Any:
    """Search the trail by patient and/or user (auditor role); the search is audited itself."""
    services = _services(request)
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
    rows = services.audit.search(
        caller, **criteria, after_seq=after, limit=min(limit, services.settings.max_query_results)
    )
    if format == "fhir":
        return auditformats.fhir_bundle(rows)
    return rows


@router.get("/audit/verify")
def verify_audit(request: Request, caller: Caller) -> dict[str, Any]:
    report = _services(request).audit.verify(caller)
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
    grant = _services(request).access.break_glass(
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
    rows = _services(request).access.grants(caller, unreviewed_only=unreviewed, limit=limit)
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
    request: Request, caller: Caller, grant_id: PathId, body: Review
) -> dict[str, Any]:
    _services(request).access.review(caller, grant_id, body.note)
    return {"grant": grant_id, "reviewed": True}
