"""Local users and their tokens: create, change, disable, log in, issue and revoke tokens.

Administration cannot grant itself patient access (issue 11):

* a ``pacs_admin`` of trust X manages only users whose trusts are all among its own, and can
  give only those trusts; a regional administrator (a pacs_admin of no trust, created by the
  operator through the CLI) and the CLI itself manage every trust;
* no account holds ``pacs_admin`` together with a clinical role or ``auditor``;
* every grant or removal of a role or trust is audited (who, whom, what) in the transaction
  that makes it. A user outside the administrator's trusts answers like one that does not exist.

Sessions: a bearer token carries the user's session epoch and the time the password was checked
(``auth_time``); a password change bumps the epoch (and revokes the user's API tokens), and a
refresh never reaches beyond ``session_max_hours`` after ``auth_time``.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from solent.domain.principal import Principal, PrincipalKind
from solent.errors import InvalidInput, NotFound
from solent.index import security as sec
from solent.index.sql import Index
from solent.security import passwords, tokens
from solent.security.keys import SigningKey, load_signing_key
from solent.security.throttle import LoginLimits, LoginThrottled
from solent.services.access import (
    NOT_WITH_ADMIN,
    AccessDenied,
    Permission,
    Role,
    permissions_of,
)
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail, audit_fields
from solent.settings import Settings

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
__all__ = [
    "NOT_WITH_ADMIN",
    "IssuedToken",
    "SessionEnded",
    "UserService",
    "check_role_mix",
    "parse_roles",
    "principal_of",
]
_OPERATOR = (PrincipalKind.SYSTEM, PrincipalKind.IMPORTER)


class SessionEnded(Exception):
    """A refresh was refused; the message says why (safe to show)."""


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: datetime | None
    id: int | None = None  # the API token's id (for list / revoke)


def parse_roles(values: list[str]) -> tuple[str, ...]:
    roles: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip().lower().replace("-", "_")
            if not name:
                continue
            try:
                roles.append(Role(name).value)
            except ValueError:
                raise InvalidInput(
                    f"unknown role {name!r}; roles are {', '.join(r.value for r in Role)}"
                ) from None
    if not roles:
        raise InvalidInput(f"give at least one role: {', '.join(r.value for r in Role)}")
    return tuple(dict.fromkeys(roles))


def check_role_mix(roles: tuple[str, ...], trust: str | None, others: tuple[str, ...]) -> None:
    """Refuse an administrator who also holds patient or audit access, and trustless non-admins."""
    if Role.PACS_ADMIN.value in roles:
        clash = sorted(r for r in roles if r in NOT_WITH_ADMIN)
        if clash:
            raise InvalidInput(
                f"pacs_admin cannot be combined with {', '.join(clash)}: an administrator must "
                "not be able to give itself patient or audit access; use a separate account"
            )
    if trust is None and (set(roles) != {Role.PACS_ADMIN.value} or others):
        raise InvalidInput(
            "a user without a trust is a regional administrator: role pacs_admin only, "
            "no further trusts; give --trust for any other user"
        )


def principal_of(row: sec.UserRow, address: str | None = None) -> Principal:
    return Principal(PrincipalKind.USER, row.name, row.trust, frozenset(row.roles), address)


def _grants(
    before: sec.UserRow | None, roles: tuple[str, ...], trusts: frozenset[str]
) -> dict[str, list[str]]:
    """What changed, for the audit record: roles and trusts added and removed."""
    old_roles = set(before.roles) if before else set()
    old_trusts = set(before.trusts) if before else set()
    changes = {
        "roles_added": sorted(set(roles) - old_roles),
        "roles_removed": sorted(old_roles - set(roles)),
        "trusts_added": sorted(trusts - old_trusts),
        "trusts_removed": sorted(old_trusts - trusts),
    }
    return {k: v for k, v in changes.items() if v}


class UserService:
    def __init__(self, index: Index, settings: Settings, audit: AuditTrail) -> None:
        self._index = index
        self.settings = settings
        self._trail = audit
        self.limits = LoginLimits(settings)
        self._key: SigningKey | None = None

    @property
    def key(self) -> SigningKey:
        if self._key is None:
            self._key = load_signing_key(self.settings)
        return self._key

    # -- who may administer whom -------------------------------------------------------------

    def manageable_trusts(self, actor: Principal) -> frozenset[str] | None:
        """The trusts whose users ``actor`` manages; None: every trust (CLI, regional admin)."""
        if actor.kind in _OPERATOR:
            return None
        if Permission.ADMIN not in permissions_of(actor):
            raise self._refused(actor, "managing users needs the pacs_admin role")
        row = sec.get_user(self._index, actor.name)
        if row is None:  # an administrator from OIDC: its trust claim
            if actor.trust is None:
                raise AccessDenied("an administrator from the identity provider needs a trust")
            return frozenset({actor.trust})
        if row.disabled:
            raise AccessDenied("this account is disabled")
        return None if row.trust is None else row.trusts

    def _target(self, actor: Principal, name: str) -> sec.UserRow:
        """The user ``actor`` may manage, or NotFound exactly as if there were no such user."""
        scope = self.manageable_trusts(actor)
        row = sec.get_user(self._index, name)
        if row is None or (scope is not None and (row.trust is None or not row.trusts <= scope)):
            raise NotFound(f"user {name} does not exist")
        return row

    def _may_give(self, actor: Principal, trust: str | None, others: tuple[str, ...]) -> None:
        # An empty code is no trust at all: refused here, not slipped past the scope check
        # below (which skips empty codes) into the database's foreign key.
        if trust == "" or "" in others:
            raise InvalidInput("a trust code cannot be empty")
        scope = self.manageable_trusts(actor)
        if trust is None and actor.kind not in _OPERATOR:
            raise self._refused(
                actor, "regional administrators are created by the operator (CLI) only"
            )
        if scope is None:
            return
        outside = sorted({c for c in (trust, *others) if c} - scope)
        if outside:
            raise self._refused(
                actor,
                f"an administrator of {', '.join(sorted(scope))} cannot give trust "
                f"{', '.join(outside)}; ask a regional administrator",
            )

    def _refused(self, actor: Principal, why: str) -> AccessDenied:
        """Audit a refused administration attempt; returns the error to raise."""
        self._trail.record(
            actor, AuditAction.PERMISSION_DENIED, AuditOutcome.DENIED, detail={"why": why}
        )
        return AccessDenied(why)

    def _audit(self, actor: Principal, detail: dict[str, Any]) -> dict[str, Any]:
        return audit_fields(actor, AuditAction.USER_ADMIN, detail=detail)

    @contextmanager
    def _hashing(self) -> Iterator[None]:
        with self.limits.hashing():
            yield

    def _hash(self, password: str) -> str:
        passwords.check_strength(password)
        with self._hashing():
            return passwords.hash_password(password)

    # -- users ---------------------------------------------------------------------------------

    def add(
        self,
        actor: Principal,
        name: str,
        trust: str | None,
        roles: tuple[str, ...],
        password: str | None,
        other_trusts: tuple[str, ...] = (),
    ) -> sec.UserRow:
        if not NAME.match(name):
            raise InvalidInput("a user name is 1-64 letters, digits, '.', '_', '@' or '-'")
        check_role_mix(roles, trust, other_trusts)
        self._may_give(actor, trust, other_trusts)
        hashed = self._hash(password) if password is not None else None
        trusts = frozenset(c for c in (trust, *other_trusts) if c)
        detail = {"user": name, "added": True, "trust": trust, **_grants(None, roles, trusts)}
        return sec.add_user(
            self._index, name, trust, roles, hashed, other_trusts, self._audit(actor, detail)
        )

    def list(self, actor: Principal | None = None) -> list[sec.UserRow]:
        """Every user (the CLI), or those ``actor`` manages."""
        rows = sec.list_users(self._index)
        scope = None if actor is None else self.manageable_trusts(actor)
        if scope is None:
            return rows
        return [r for r in rows if r.trust is not None and r.trusts <= scope]

    def get(self, name: str) -> sec.UserRow | None:
        return sec.get_user(self._index, name)

    def find(self, actor: Principal, name: str) -> sec.UserRow:
        return self._target(actor, name)

    def set_roles(self, actor: Principal, name: str, roles: tuple[str, ...]) -> sec.UserRow:
        row = self._target(actor, name)
        check_role_mix(roles, row.trust, row.other_trusts)
        if actor.name == name and actor.kind is PrincipalKind.USER:
            raise self._refused(actor, "an administrator cannot change its own roles")
        changes = _grants(row, roles, row.trusts)
        sec.update_user(
            self._index, name, roles=roles, audit=self._audit(actor, {"user": name, **changes})
        )
        found = sec.get_user(self._index, name)
        assert found is not None
        return found

    def set_trusts(
        self, actor: Principal, name: str, trust: str | None, others: tuple[str, ...]
    ) -> sec.UserRow:
        row = self._target(actor, name)
        others = tuple(dict.fromkeys(c for c in others if c != trust))
        check_role_mix(row.roles, trust, others)
        self._may_give(actor, trust, others)
        trusts = frozenset(c for c in (trust, *others) if c)
        changes = _grants(row, row.roles, trusts)
        sec.update_user(
            self._index,
            name,
            trust=trust,
            other_trusts=others,
            audit=self._audit(actor, {"user": name, "trust": trust, **changes}),
        )
        found = sec.get_user(self._index, name)
        assert found is not None
        return found

    def set_other_trusts(self, actor: Principal, name: str, other: tuple[str, ...]) -> None:
        row = self._target(actor, name)
        self.set_trusts(actor, name, row.trust, other)

    def disable(self, actor: Principal, name: str) -> None:
        self._target(actor, name)
        sec.update_user(
            self._index,
            name,
            disabled=True,
            audit=self._audit(actor, {"user": name, "disabled": True}),
        )

    def enable(self, actor: Principal, name: str) -> None:
        self._target(actor, name)
        sec.update_user(
            self._index,
            name,
            disabled=False,
            audit=self._audit(actor, {"user": name, "disabled": False}),
        )

    def set_password(self, actor: Principal, name: str, password: str) -> None:
        """Set (reset) a password; the user's sessions and API tokens end with the old one."""
        self._target(actor, name)
        sec.update_user(
            self._index,
            name,
            password_hash=self._hash(password),
            end_sessions=True,
            audit=self._audit(actor, {"user": name, "password": "set", "sessions": "ended"}),
        )

    def change_own_password(
        self, caller: Principal, current: str, new: str, address: str | None
    ) -> None:
        """A user changes their own password, proving the current one (throttled like login)."""
        row = sec.get_user(self._index, caller.name)
        if row is None or row.password_hash is None or caller.kind is not PrincipalKind.USER:
            raise InvalidInput("this account has no password to change")
        if not self._check(row, row.name, current, address):
            raise AccessDenied("the current password is wrong")
        passwords.check_strength(new)
        sec.update_user(
            self._index,
            row.name,
            password_hash=self._hash(new),
            end_sessions=True,
            audit=self._audit(caller, {"user": row.name, "password": "changed"}),
        )

    def end_sessions(self, actor: Principal, name: str) -> None:
        """Log a user out everywhere: bearer tokens issued so far and API tokens stop working."""
        if not (actor.kind is PrincipalKind.USER and actor.name == name):
            self._target(actor, name)
        sec.update_user(
            self._index,
            name,
            end_sessions=True,
            audit=self._audit(actor, {"user": name, "sessions": "ended"}),
        )

    # -- logging in ----------------------------------------------------------------------------

    def _check(self, row: sec.UserRow | None, name: str, password: str, addr: str | None) -> bool:
        """The throttled, bounded Argon2 check; refusals and failures are audited."""
        who = Principal(PrincipalKind.USER, name[:64] or "(none)", None, address=addr)
        try:
            self.limits.admit(name, addr)
        except LoginThrottled as exc:
            key = {"address": addr or "?", "user": name}.get(exc.scope, "*")
            if self.limits.first_refusal(exc.scope, key):
                self._trail.record(
                    who,
                    AuditAction.LOGIN_FAILED,
                    AuditOutcome.DENIED,
                    detail={"method": "password", "why": "throttled", "scope": exc.scope},
                )
            raise
        with self._hashing():
            ok = passwords.verify_password(row.password_hash if row else None, password)
        if not ok:
            self.limits.failed(name, addr)
        return ok

    def login(self, name: str, password: str, address: str | None) -> IssuedToken | None:
        """Check a password; on success a short-lived bearer token. Both outcomes are audited.

        Raises LoginThrottled (too many attempts) or LoginBusy (no Argon2 slot in time).
        """
        row = sec.get_user(self._index, name) if NAME.match(name) else None
        ok = self._check(row, name, password, address)
        if row is None or not ok or row.disabled:
            who = Principal(PrincipalKind.USER, name[:64] or "(none)", None, address=address)
            self._trail.record(
                who,
                AuditAction.LOGIN_FAILED,
                AuditOutcome.DENIED,
                detail={"method": "password", "why": "disabled" if row and ok else "bad"},
            )
            return None
        self._trail.record(
            principal_of(row, address), AuditAction.LOGIN, detail={"method": "password"}
        )
        return self._issue(row.name)

    def issue(self, name: str, actor: Principal, auth_time: datetime | None = None) -> IssuedToken:
        """A login token for ``name`` minted by the operator on the server (`solent token
        create`), audited; people get theirs by logging in. No adapter can mint one for a
        user it has not authenticated (issue 11: that would be every patient's data)."""
        if actor.kind not in _OPERATOR:
            raise AccessDenied(
                "only the operator on the server mints a token for another user "
                "(`solent token create`); log in for your own"
            )
        issued = self._issue(name, auth_time)
        self._trail.record(actor, AuditAction.USER_ADMIN, detail={"token_for": name})
        return issued

    def _issue(self, name: str, auth_time: datetime | None = None) -> IssuedToken:
        """A bearer token; ``auth_time`` (default now) starts the session's absolute lifetime."""
        row = sec.get_user(self._index, name)
        if row is None:
            raise NotFound(f"user {name} does not exist; add it with `solent user add`")
        if row.disabled:
            raise InvalidInput(f"user {name} is disabled")
        now = datetime.now(UTC)
        started = auth_time or now
        ttl = timedelta(minutes=self.settings.token_ttl_minutes)
        left = started + timedelta(hours=self.settings.session_max_hours) - now
        if left <= timedelta(0):
            raise SessionEnded("the session reached its absolute lifetime; log in again")
        token, expires = tokens.issue_local(
            self.key,
            name,
            min(ttl, left),
            {"sep": row.session_epoch, "auth_time": int(started.timestamp())},
        )
        return IssuedToken(token, expires)

    def refresh(self, token: str) -> IssuedToken:
        """A new bearer token for the same session: same epoch, same absolute end."""
        if not tokens.looks_like_jwt(token):
            raise SessionEnded("only a login bearer token can be refreshed (not an API token)")
        try:
            claims = tokens.verify_local(self.key, token)
        except tokens.TokenInvalid as exc:
            raise SessionEnded(str(exc)) from exc
        row = sec.get_user(self._index, str(claims["sub"]))
        if row is None or row.disabled or claims.get("sep", 0) != row.session_epoch:
            raise SessionEnded("the session has ended; log in again")
        started = datetime.fromtimestamp(int(claims.get("auth_time", claims["iat"])), UTC)
        return self._issue(row.name, auth_time=started)

    # -- API tokens ----------------------------------------------------------------------------

    def issue_api_token(
        self, actor: Principal, name: str, label: str, days: int | None
    ) -> IssuedToken:
        """A service API token; it expires after ``days`` (default: settings.api_token_days)."""
        self._target(actor, name)
        days = self.settings.api_token_days if days is None else days
        if not 1 <= days <= 3650:
            raise InvalidInput("an API token lives 1 to 3650 days")
        token = tokens.new_api_token()
        expires = datetime.now(UTC) + timedelta(days=days)
        token_id = sec.add_api_token(
            self._index,
            tokens.api_token_digest(token),
            name,
            label[:200],
            expires,
            self._audit(actor, {"api_token_for": name, "label": label[:200], "days": days}),
        )
        return IssuedToken(token, expires, token_id)

    def list_tokens(self, actor: Principal, user: str | None = None) -> builtins.list[sec.TokenRow]:
        """API tokens of the users ``actor`` manages (or a user's own)."""
        if user is not None and actor.kind is PrincipalKind.USER and actor.name == user:
            return sec.list_api_tokens(self._index, user)
        if user is not None:
            self._target(actor, user)
            return sec.list_api_tokens(self._index, user)
        scope = self.manageable_trusts(actor)
        rows = sec.list_api_tokens(self._index)
        if scope is None:
            return rows
        allowed = {r.name for r in self.list(actor)}
        return [r for r in rows if r.user_name in allowed]

    def revoke_token(self, actor: Principal, token_id: int) -> sec.TokenRow:
        row = sec.get_api_token(self._index, token_id)
        missing = NotFound(f"API token {token_id} does not exist")
        if row is None:
            raise missing
        if not (actor.kind is PrincipalKind.USER and actor.name == row.user_name):
            try:
                self._target(actor, row.user_name)
            except NotFound:
                raise missing from None
        sec.revoke_api_token(
            self._index,
            token_id,
            self._audit(actor, {"api_token_revoked": token_id, "user": row.user_name}),
        )
        found = sec.get_api_token(self._index, token_id)
        assert found is not None
        return found
