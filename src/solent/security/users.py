"""Local users and their tokens: create, list, disable, log in, issue bearer and API tokens."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from solent.domain.principal import Principal, PrincipalKind
from solent.errors import InvalidInput, NotFound
from solent.index import security as sec
from solent.index.sql import Index
from solent.security import passwords, tokens
from solent.security.keys import SigningKey, load_signing_key
from solent.services.access import Role
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail
from solent.settings import Settings

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: datetime | None


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


def principal_of(row: sec.UserRow, address: str | None = None) -> Principal:
    return Principal(PrincipalKind.USER, row.name, row.trust, frozenset(row.roles), address)


class UserService:
    def __init__(self, index: Index, settings: Settings, audit: AuditTrail) -> None:
        self.index = index
        self.settings = settings
        self.audit = audit
        self._key: SigningKey | None = None

    @property
    def key(self) -> SigningKey:
        if self._key is None:
            self._key = load_signing_key(self.settings)
        return self._key

    def add(
        self,
        actor: Principal,
        name: str,
        trust: str,
        roles: tuple[str, ...],
        password: str | None,
        other_trusts: tuple[str, ...] = (),
    ) -> sec.UserRow:
        if not NAME.match(name):
            raise InvalidInput("a user name is 1-64 letters, digits, '.', '_', '@' or '-'")
        hashed = passwords.hash_password(password) if password is not None else None
        row = sec.add_user(self.index, name, trust, roles, hashed, other_trusts)
        self.audit.record(
            actor,
            AuditAction.USER_ADMIN,
            detail={"user": name, "added": True, "trust": trust, "roles": list(roles)},
        )
        return row

    def list(self) -> list[sec.UserRow]:
        return sec.list_users(self.index)

    def get(self, name: str) -> sec.UserRow | None:
        return sec.get_user(self.index, name)

    def disable(self, actor: Principal, name: str) -> None:
        sec.update_user(self.index, name, disabled=True)
        self.audit.record(actor, AuditAction.USER_ADMIN, detail={"user": name, "disabled": True})

    def set_other_trusts(self, actor: Principal, name: str, other: tuple[str, ...]) -> None:
        sec.update_user(self.index, name, other_trusts=other)
        self.audit.record(actor, AuditAction.USER_ADMIN, detail={"user": name, "trusts": other})

    def set_password(self, actor: Principal, name: str, password: str) -> None:
        sec.update_user(self.index, name, password_hash=passwords.hash_password(password))
        self.audit.record(actor, AuditAction.USER_ADMIN, detail={"user": name, "password": "set"})

    def login(self, name: str, password: str, address: str | None) -> IssuedToken | None:
        """Check a password; on success a short-lived bearer token. Both outcomes are audited."""
        row = sec.get_user(self.index, name) if NAME.match(name) else None
        ok = passwords.verify_password(row.password_hash if row else None, password)
        if row is None or not ok or row.disabled:
            who = Principal(PrincipalKind.USER, name[:64] or "(none)", None, address=address)
            self.audit.record(
                who,
                AuditAction.LOGIN_FAILED,
                AuditOutcome.DENIED,
                detail={"method": "password", "why": "disabled" if row and ok else "bad"},
            )
            return None
        self.audit.record(
            principal_of(row, address), AuditAction.LOGIN, detail={"method": "password"}
        )
        return self.issue(row.name)

    def issue(self, name: str, actor: Principal | None = None) -> IssuedToken:
        row = sec.get_user(self.index, name)
        if row is None:
            raise NotFound(f"user {name} does not exist; add it with `solent user add`")
        if row.disabled:
            raise InvalidInput(f"user {name} is disabled")
        token, expires = tokens.issue_local(
            self.key, name, timedelta(minutes=self.settings.token_ttl_minutes)
        )
        if actor is not None:
            self.audit.record(actor, AuditAction.USER_ADMIN, detail={"token_for": name})
        return IssuedToken(token, expires)

    def issue_api_token(
        self, actor: Principal, name: str, label: str, days: int | None
    ) -> IssuedToken:
        row = sec.get_user(self.index, name)
        if row is None:
            raise NotFound(f"user {name} does not exist; add it with `solent user add`")
        token = tokens.new_api_token()
        expires = datetime.now(UTC) + timedelta(days=days) if days else None
        sec.add_api_token(self.index, tokens.api_token_digest(token), name, label, expires)
        self.audit.record(
            actor, AuditAction.USER_ADMIN, detail={"api_token_for": name, "label": label}
        )
        return IssuedToken(token, expires)
