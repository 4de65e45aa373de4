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
from typing import TYPE_CHECKING, Any

from solent.domain.national_role import JOB_ROLE, NationalRole
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

if TYPE_CHECKING:
    from solent.services.national_rbac import NationalPolicy

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
__all__ = [
    "NOT_WITH_ADMIN",
    "IssuedToken",
    "OrgRefused",
    "SessionEnded",
    "UserService",
    "check_role_mix",
    "parse_roles",
    "principal_of",
]
_OPERATOR = (PrincipalKind.SYSTEM, PrincipalKind.IMPORTER)


class OrgRefused(AccessDenied):
    """The organisation asked for at login is not one the account holds a role at (R33)."""


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


def principal_of(
    row: sec.UserRow,
    address: str | None = None,
    org: str | None = None,
    policy: NationalPolicy | None = None,
) -> Principal:
    """The caller a local account is: for every trust it holds, or (R33) for ``org``, the
    organisation selected at login (checked by `session_org`) under its national role there."""
    if org is None:
        return Principal(PrincipalKind.USER, row.name, row.trust, frozenset(row.roles), address)
    role = next((r for r in row.national_roles if r.org == org), None)
    if role is not None and policy is not None:
        found = policy.resolve(role)
        return Principal(PrincipalKind.USER, row.name, org, found.roles, address, national=found)
    return Principal(
        PrincipalKind.USER, row.name, org, frozenset(row.roles), address, org_selected=True
    )


def parse_national_role(value: str) -> NationalRole:
    """``ORG:R-CODE[:B0001+B0002...]`` (the CLI's and API's form of one assignment)."""
    org, _, rest = value.strip().partition(":")
    job_role, _, activities = rest.partition(":")
    codes = frozenset(a.strip().upper() for a in activities.replace(",", "+").split("+") if a)
    if not org or not JOB_ROLE.match(job_role.strip().upper()):
        raise InvalidInput(
            f"national role {value!r}: give ORG:R-CODE[:B0000+B0001], e.g. ZZA:R8000:B0264"
        )
    return NationalRole(org.strip(), job_role.strip().upper(), codes)


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
    def __init__(
        self,
        index: Index,
        settings: Settings,
        audit: AuditTrail,
        national: NationalPolicy | None = None,
    ) -> None:
        self._index = index
        self.settings = settings
        self._trail = audit
        self.limits = LoginLimits(settings)
        self._key: SigningKey | None = None
        #: The consortium's national RBAC policy (R33); None: Solent roles only.
        self.national = national

    # -- the organisation a session acts for (R33) ---------------------------------------------

    def session_org(self, row: sec.UserRow, org: str | None) -> str | None:
        """The organisation a session of ``row`` acts for, given the one asked for at login.

        An account with national roles acts under one of them, so for one organisation (the
        only one it has, else the one chosen); an account without acts for ``org`` when one
        is chosen, else for all its trusts (None). Raises OrgRefused naming the choices."""
        roles = row.national_roles if self.national is not None else ()
        # A national role counts only at a trust the account still holds.
        held = sorted({r.org for r in roles} & row.trusts if roles else row.trusts)
        if roles and not held:
            raise OrgRefused(
                "your national roles are at organisations this account no longer holds; "
                "ask your administrator"
            )
        if org is None:
            if not roles:
                return None
            if len(held) == 1:
                return held[0]
            raise OrgRefused(
                f"you hold national roles at {', '.join(held)}: choose the organisation you "
                "are working for at login (org=ODS code)"
            )
        asked = org.strip()
        # ODS codes are upper case; a user typing "zzb" means ZZB.
        org = next((h for h in held if h.upper() == asked.upper()), asked)
        if org not in held:
            what = "a national role" if roles else "a role"
            raise OrgRefused(
                f"you hold {what} at {', '.join(held) or 'no organisation'}, not at {org}; "
                "choose one of those"
            )
        return org

    def principal(self, row: sec.UserRow, address: str | None, org: str | None) -> Principal:
        """The caller a session of ``row`` for ``org`` is (OrgRefused when no longer held)."""
        return principal_of(row, address, self.session_org(row, org), self.national)

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
        if Role.PACS_ADMIN.value in roles and row.national_roles:
            raise InvalidInput(
                "this account holds national roles (patient data); an administrator must be a "
                "separate account"
            )
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

    def set_national_roles(
        self, actor: Principal, name: str, roles: tuple[NationalRole, ...]
    ) -> sec.UserRow:
        """Assign a local account its national RBAC roles (R33), one per organisation, each at
        one of the account's trusts and in the consortium's policy; () removes them all."""
        row = self._target(actor, name)
        if self.national is None and roles:
            raise InvalidInput(
                "national RBAC is not configured: set SOLENT_RBAC_POLICY to the consortium's "
                "policy file first"
            )
        if actor.name == name and actor.kind is PrincipalKind.USER:
            raise self._refused(actor, "an administrator cannot change its own roles")
        if roles and Role.PACS_ADMIN.value in row.roles:
            raise InvalidInput(
                "an administrator account holds no national role (it would read patient data); "
                "use a separate account"
            )
        orgs = [r.org for r in roles]
        twice = sorted({o for o in orgs if orgs.count(o) > 1})
        if twice:
            raise InvalidInput(f"one national role per organisation: {', '.join(twice)} twice")
        outside = sorted(set(orgs) - row.trusts)
        if outside:
            raise InvalidInput(
                f"user {name} holds no trust {', '.join(outside)}; give it the trust first "
                "(its trusts: " + (", ".join(sorted(row.trusts)) or "none") + ")"
            )
        assert self.national is not None or not roles
        for role in roles:
            unknown = self.national.unknown(role) if self.national else []
            if unknown:
                raise InvalidInput(
                    f"{', '.join(unknown)} not in the consortium's RBAC policy "
                    f"({self.national.source if self.national else ''}); check the code"
                )
        self._may_give(actor, row.trust, tuple(orgs))

        def described(rs: tuple[NationalRole, ...]) -> list[str]:
            return sorted(f"{r.org}:{r.job_role}:{'+'.join(sorted(r.activities))}" for r in rs)

        before, after = described(row.national_roles), described(roles)
        changes = {
            "national_roles_added": sorted(set(after) - set(before)),
            "national_roles_removed": sorted(set(before) - set(after)),
        }
        sec.update_user(
            self._index,
            name,
            national_roles=roles,
            audit=self._audit(actor, {"user": name, **{k: v for k, v in changes.items() if v}}),
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

    def login(
        self, name: str, password: str, address: str | None, org: str | None = None
    ) -> IssuedToken | None:
        """Check a password; on success a short-lived bearer token for the organisation
        ``org`` (R33; see `session_org`). Both outcomes are audited.

        Raises LoginThrottled (too many attempts), LoginBusy (no Argon2 slot in time) or
        OrgRefused (the password is right but the organisation is not the account's).
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
        try:
            chosen = self.session_org(row, org)
        except OrgRefused as exc:
            self._trail.record(
                principal_of(row, address),
                AuditAction.LOGIN_FAILED,
                AuditOutcome.DENIED,
                detail={"method": "password", "why": "organisation", "org": (org or "")[:16]},
            )
            raise exc from None
        self._trail.record(
            principal_of(row, address, chosen, self.national),
            AuditAction.LOGIN,
            detail={"method": "password", **({"org": chosen} if chosen else {})},
        )
        return self._issue(row.name, org=chosen)

    def issue(
        self,
        name: str,
        actor: Principal,
        auth_time: datetime | None = None,
        org: str | None = None,
    ) -> IssuedToken:
        """A login token for ``name`` minted by the operator on the server (`solent token
        create`), audited; people get theirs by logging in. No adapter can mint one for a
        user it has not authenticated (issue 11: that would be every patient's data)."""
        if actor.kind not in _OPERATOR:
            raise AccessDenied(
                "only the operator on the server mints a token for another user "
                "(`solent token create`); log in for your own"
            )
        row = sec.get_user(self._index, name)
        chosen = self.session_org(row, org) if row is not None else None
        issued = self._issue(name, auth_time, org=chosen)
        detail = {"token_for": name, **({"org": chosen} if chosen else {})}
        self._trail.record(actor, AuditAction.USER_ADMIN, detail=detail)
        return issued

    def _issue(
        self, name: str, auth_time: datetime | None = None, *, org: str | None = None
    ) -> IssuedToken:
        """A bearer token; ``auth_time`` (default now) starts the session's absolute lifetime;
        ``org`` (R33) is the organisation the session acts for, carried as claim ``org``."""
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
            {
                "sep": row.session_epoch,
                "auth_time": int(started.timestamp()),
                **({"org": org} if org else {}),
            },
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
        org = claims.get("org")
        try:
            chosen = self.session_org(row, org if isinstance(org, str) else None)
        except OrgRefused as exc:
            raise SessionEnded(f"{exc}; log in again") from exc
        return self._issue(row.name, auth_time=started, org=chosen)

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
