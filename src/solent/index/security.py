"""SQL of users, service API tokens and break-glass grants."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, or_, select, update

from solent.domain.national_role import NationalRole
from solent.errors import AlreadyExists, NotFound
from solent.index import audit as chain
from solent.index import schema as t
from solent.index.sql import Index, now


@dataclass(frozen=True, slots=True)
class UserRow:
    name: str
    trust: str | None  # None: a regional administrator
    other_trusts: tuple[str, ...]
    roles: tuple[str, ...]
    password_hash: str | None
    disabled: bool
    session_epoch: int = 0
    #: National RBAC roles assigned to this local account (R33), one per organisation.
    national_roles: tuple[NationalRole, ...] = ()

    @property
    def trusts(self) -> frozenset[str]:
        return frozenset(c for c in (self.trust, *self.other_trusts) if c)


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v for v in (value or "").split(",") if v)


def national_roles_json(roles: Collection[NationalRole]) -> str | None:
    if not roles:
        return None
    return json.dumps(
        [
            {"org": r.org, "job_role": r.job_role, "activities": sorted(r.activities)}
            for r in sorted(roles, key=lambda r: r.org)
        ],
        separators=(",", ":"),
    )


def _national(value: str | None) -> tuple[NationalRole, ...]:
    if not value:
        return ()
    return tuple(
        NationalRole(str(e["org"]), str(e["job_role"]), frozenset(map(str, e["activities"])))
        for e in json.loads(value)
    )


def _user(r: object) -> UserRow:
    return UserRow(
        r.name,  # type: ignore[attr-defined]
        r.trust_code,  # type: ignore[attr-defined]
        _split(r.other_trusts),  # type: ignore[attr-defined]
        _split(r.roles),  # type: ignore[attr-defined]
        r.password_hash,  # type: ignore[attr-defined]
        bool(r.disabled),  # type: ignore[attr-defined]
        int(r.session_epoch or 0),  # type: ignore[attr-defined]
        _national(r.national_roles),  # type: ignore[attr-defined]
    )


def _require_trusts(conn: Connection, codes: tuple[str, ...]) -> None:
    for code in codes:
        if not conn.execute(select(t.trust.c.code).where(t.trust.c.code == code)).first():
            raise NotFound(f"trust {code} does not exist; add it with `solent trust add`")


def add_user(
    index: Index,
    name: str,
    trust: str | None,
    roles: tuple[str, ...],
    password_hash: str | None,
    other_trusts: tuple[str, ...] = (),
    audit: dict[str, Any] | None = None,
) -> UserRow:
    """Insert a user; ``audit`` (an audit row) is appended in the same transaction."""

    def op(conn: Connection) -> UserRow:
        _require_trusts(conn, tuple(c for c in (trust, *other_trusts) if c))
        if conn.execute(select(t.app_user.c.name).where(t.app_user.c.name == name)).first():
            raise AlreadyExists(f"user {name} already exists")
        conn.execute(
            insert(t.app_user).values(
                name=name,
                trust_code=trust,
                other_trusts=",".join(other_trusts),
                roles=",".join(roles),
                password_hash=password_hash,
                disabled=False,
                created_at=now(),
                session_epoch=0,
            )
        )
        if audit is not None:
            chain.append(conn, audit)
        return UserRow(name, trust, other_trusts, roles, password_hash, False)

    row = index.write(op)
    _changed()
    return row


#: Bumped by every change of a user or token in this process, so caches of look-ups
#: (security/authn.py) drop what they hold at once; other processes wait out their TTL.
_generation = 0


def generation() -> int:
    return _generation


def _changed() -> None:
    global _generation
    _generation += 1


_KEEP: Any = object()  # "leave the trust as it is" (None is a value: a regional administrator)


def update_user(
    index: Index,
    name: str,
    *,
    trust: str | None = _KEEP,
    roles: tuple[str, ...] | None = None,
    other_trusts: tuple[str, ...] | None = None,
    password_hash: str | None = None,
    disabled: bool | None = None,
    end_sessions: bool = False,
    national_roles: Collection[NationalRole] | None = None,
    audit: dict[str, Any] | None = None,
) -> None:
    """Change a user in one transaction with its audit row.

    ``end_sessions`` bumps the session epoch (bearer tokens issued before stop working) and
    revokes the user's API tokens: what a password change or "log out everywhere" means.
    """
    values: dict[str, object] = {}
    if trust is not _KEEP:
        values["trust_code"] = trust
    if roles is not None:
        values["roles"] = ",".join(roles)
    if other_trusts is not None:
        values["other_trusts"] = ",".join(other_trusts)
    if password_hash is not None:
        values["password_hash"] = password_hash
    if disabled is not None:
        values["disabled"] = disabled
    if national_roles is not None:
        values["national_roles"] = national_roles_json(national_roles)

    if end_sessions:
        values["session_epoch"] = t.app_user.c.session_epoch + 1

    def op(conn: Connection) -> None:
        given = (
            values.get("trust_code"),
            *(other_trusts or ()),
            *(r.org for r in national_roles or ()),
        )
        _require_trusts(conn, tuple(str(c) for c in given if c))
        res = conn.execute(update(t.app_user).where(t.app_user.c.name == name).values(**values))
        if res.rowcount == 0:
            raise NotFound(f"user {name} does not exist")
        if end_sessions:
            conn.execute(
                update(t.api_token)
                .where(t.api_token.c.user_name == name, t.api_token.c.revoked.is_(False))
                .values(revoked=True)
            )
        if audit is not None:
            chain.append(conn, audit)

    index.write(op)
    _changed()


def get_user(index: Index, name: str, *, conn: Connection | None = None) -> UserRow | None:
    if conn is not None:
        r = conn.execute(select(t.app_user).where(t.app_user.c.name == name)).first()
        return _user(r) if r else None
    with index.read() as c:
        return get_user(index, name, conn=c)


def list_users(index: Index) -> list[UserRow]:
    with index.read() as conn:
        return [_user(r) for r in conn.execute(select(t.app_user).order_by(t.app_user.c.name))]


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A service API token as listed: never the token itself (only its SHA-256 is stored)."""

    id: int
    user_name: str
    label: str
    created_at: datetime
    expires_at: datetime | None
    revoked: bool


def add_api_token(
    index: Index,
    token_sha256: str,
    user: str,
    label: str,
    expires_at: datetime | None,
    audit: dict[str, Any] | None = None,
) -> int:
    def op(conn: Connection) -> int:
        res = conn.execute(
            insert(t.api_token)
            .values(
                token_sha256=token_sha256,
                user_name=user,
                label=label,
                created_at=now(),
                expires_at=expires_at,
                revoked=False,
            )
            .returning(t.api_token.c.pk)
        )
        if audit is not None:
            chain.append(conn, audit)
        return int(res.scalar_one())

    return index.write(op)


def list_api_tokens(index: Index, user: str | None = None) -> list[TokenRow]:
    c = t.api_token.c
    q = select(c.pk, c.user_name, c.label, c.created_at, c.expires_at, c.revoked).order_by(c.pk)
    if user is not None:
        q = q.where(c.user_name == user)
    with index.read() as conn:
        return [
            TokenRow(int(r.pk), r.user_name, r.label or "", r.created_at, r.expires_at, r.revoked)
            for r in conn.execute(q)
        ]


def get_api_token(index: Index, token_id: int) -> TokenRow | None:
    c = t.api_token.c
    with index.read() as conn:
        r = conn.execute(
            select(c.pk, c.user_name, c.label, c.created_at, c.expires_at, c.revoked).where(
                c.pk == token_id
            )
        ).first()
    if r is None:
        return None
    return TokenRow(int(r.pk), r.user_name, r.label or "", r.created_at, r.expires_at, r.revoked)


def revoke_api_token(index: Index, token_id: int, audit: dict[str, Any] | None = None) -> bool:
    """Mark one token revoked (with its audit row); False if it was revoked already."""

    def op(conn: Connection) -> bool:
        res = conn.execute(
            update(t.api_token)
            .where(t.api_token.c.pk == token_id, t.api_token.c.revoked.is_(False))
            .values(revoked=True)
        )
        if res.rowcount and audit is not None:
            chain.append(conn, audit)
        return bool(res.rowcount)

    done = index.write(op)
    _changed()
    return done


def find_api_token(index: Index, token_sha256: str) -> tuple[str, datetime | None] | None:
    """(user name, expiry) of a live (not revoked) API token."""
    c = t.api_token.c
    with index.read() as conn:
        r = conn.execute(
            select(c.user_name, c.expires_at).where(
                c.token_sha256 == token_sha256, c.revoked.is_(False)
            )
        ).first()
        return (r.user_name, r.expires_at) if r else None


# -- break-glass ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GrantRow:
    id: int
    user_name: str
    user_trust: str | None
    patient_pk: int
    patient_issuer: str
    patient_id: str
    nhs_number: str | None
    reason_code: str
    reason_text: str
    granted_at: datetime
    expires_at: datetime
    reviewed_at: datetime | None
    reviewed_by: str | None
    review_note: str | None


def add_grant(
    conn: Connection,
    user_name: str,
    user_trust: str | None,
    patient_pk: int,
    reason_code: str,
    reason_text: str,
    expires_at: datetime,
) -> int:
    res = conn.execute(
        insert(t.break_glass)
        .values(
            user_name=user_name,
            user_trust=user_trust,
            patient_pk=patient_pk,
            reason_code=reason_code,
            reason_text=reason_text,
            granted_at=now(),
            expires_at=expires_at,
        )
        .returning(t.break_glass.c.pk)
    )
    return int(res.scalar_one())


def list_grants(
    index: Index,
    *,
    unreviewed_only: bool = False,
    user_name: str | None = None,
    limit: int = 100,
    trusts: Collection[str] | None = None,
) -> list[GrantRow]:
    """Grants, newest first; ``trusts``: only those by a user of these trusts or opening a
    record they issued (the trusts involved), None: all."""
    g, p = t.break_glass.c, t.patient.c
    q = (
        select(
            g.pk,
            g.user_name,
            g.user_trust,
            g.patient_pk,
            p.issuer,
            p.local_id,
            p.nhs_number,
            g.reason_code,
            g.reason_text,
            g.granted_at,
            g.expires_at,
            g.reviewed_at,
            g.reviewed_by,
            g.review_note,
        )
        .select_from(t.break_glass.join(t.patient, g.patient_pk == p.pk))
        .order_by(g.pk.desc())
        .limit(limit)
    )
    if unreviewed_only:
        q = q.where(g.reviewed_at.is_(None))
    if user_name:
        q = q.where(g.user_name == user_name)
    if trusts is not None:
        q = q.where(or_(g.user_trust.in_(sorted(trusts)), p.issuer.in_(sorted(trusts))))
    with index.read() as conn:
        return [GrantRow(*tuple(r)) for r in conn.execute(q)]


def review_grant(
    conn: Connection,
    grant_id: int,
    reviewer: str,
    note: str,
    trusts: Collection[str] | None = None,
) -> bool:
    """Mark an unreviewed grant reviewed (``trusts``: only one involving them, as in
    `list_grants`); False when there is no such grant."""
    g = t.break_glass.c
    q = update(t.break_glass).where(g.pk == grant_id, g.reviewed_at.is_(None))
    if trusts is not None:
        issued = select(t.patient.c.pk).where(t.patient.c.issuer.in_(sorted(trusts)))
        q = q.where(or_(g.user_trust.in_(sorted(trusts)), g.patient_pk.in_(issued)))
    res = conn.execute(q.values(reviewed_at=now(), reviewed_by=reviewer, review_note=note))
    return bool(res.rowcount)
