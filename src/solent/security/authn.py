"""Who is calling: an Authorization header in, a Principal (or a reason for refusal) out.

A local bearer token names the user's session epoch; one issued before a password change (or
"log out everywhere") no longer matches and is refused.

User rows, API-token look-ups and verified local tokens' claims are remembered for
``LOOKUP_TTL_S`` per process: a viewer sends hundreds of /frames requests a second, and two
index reads (or a signature check) per request cost more than the frame. A user disabled or a
token revoked is refused within that time. ``remembered`` answers from those memories alone,
so the HTTP middleware can skip the thread hand-off a look-up would need.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

from solent.domain.national_role import NationalRole, job_role_of
from solent.domain.principal import Principal, PrincipalKind
from solent.index import security as sec
from solent.index.sql import Index
from solent.security import tokens
from solent.security.oidc import OidcIssuer, OidcVerifier, read_userinfo
from solent.security.tokens import TokenInvalid
from solent.security.users import OrgRefused, UserService
from solent.services.access import Role
from solent.services.smart import LaunchInvalid, launch_of
from solent.settings import Settings
from solent.ttl_cache import TtlCache

LOOKUP_TTL_S = 2.0
#: How long an OIDC token's userinfo answer (its national roles, R33) is reused: a role taken
#: away at the identity provider applies to that token within this time.
USERINFO_TTL_S = 60.0
JWT_LEEWAY_S = 5  # as tokens.verify_local: expired once exp <= now - leeway


class AuthenticationFailed(Exception):
    """Refused; the message is safe to show (it never echoes the credential)."""


class Authenticator:
    def __init__(self, index: Index, settings: Settings, users: UserService) -> None:
        self._index = index
        self.settings = settings
        self.users = users
        self.oidc: OidcVerifier | None = None
        self._users: TtlCache[sec.UserRow | None] = TtlCache(
            LOOKUP_TTL_S, generation=sec.generation
        )
        self._tokens: TtlCache[tuple[str, datetime | None] | None] = TtlCache(
            LOOKUP_TTL_S, generation=sec.generation
        )
        # local token -> (sub, session epoch, exp, org) of a token whose signature was checked
        self._verified: TtlCache[tuple[str, Any, float, str | None]] = TtlCache(
            LOOKUP_TTL_S, generation=sec.generation
        )
        if settings.oidc_issuer:
            issuer = OidcIssuer(
                settings.oidc_issuer,
                jwks_url=settings.oidc_jwks_url,
                authorization_endpoint=settings.oidc_authorization_endpoint,
                token_endpoint=settings.oidc_token_endpoint,
            )
            self.oidc = OidcVerifier(issuer, settings.oidc_audience)
        # OIDC token digest -> the national RBAC claims of its userinfo answer
        self._userinfo: TtlCache[dict[str, Any]] = TtlCache(USERINFO_TTL_S, limit=2_000)

    def bearer(self, token: str, address: str | None) -> Principal:
        token = token.strip()
        if not token or len(token) > 16384:
            raise AuthenticationFailed("empty or oversized bearer token")
        if token.startswith(tokens.API_TOKEN_PREFIX):
            return self._api_token(token, address)
        if not tokens.looks_like_jwt(token):
            raise AuthenticationFailed("the bearer token is not a token Solent issued or trusts")
        iss = tokens.unverified_issuer(token)
        try:
            if self.oidc is not None and iss == self.oidc.issuer:
                claims = self._with_userinfo(token)
                return _launched(self._oidc_principal(claims, address), claims)
            claims = tokens.verify_local(self.users.key, token)
        except TokenInvalid as exc:
            raise AuthenticationFailed(str(exc)) from exc
        sub, epoch = str(claims["sub"]), claims.get("sep", 0)
        org = claims.get("org") if isinstance(claims.get("org"), str) else None
        self._verified.put(token, (sub, epoch, float(claims["exp"]), org))
        return self._user(sub, address, session_epoch=epoch, org=org)

    def remembered(self, token: str, address: str | None) -> Principal | None:
        """The principal of a bearer token when every look-up it needs is remembered and
        grants it (no index read, no signature check); None when anything would need work,
        or would refuse: then `bearer` decides (and a refusal is audited as usual)."""
        token = token.strip()
        if token.startswith(tokens.API_TOKEN_PREFIX):
            hit, found = self._tokens.lookup(tokens.api_token_digest(token))
            if not hit or found is None:
                return None
            user, expires = found
            if expires is not None:
                if expires.tzinfo is None:
                    expires = expires.replace(tzinfo=UTC)
                if expires <= datetime.now(UTC):
                    return None
            epoch: object = None
            org: str | None = None
        else:
            hit, verified = self._verified.lookup(token)
            if not hit or verified is None:
                return None
            user, epoch, exp, org = verified
            if exp <= time.time() - JWT_LEEWAY_S:
                return None
        hit, row = self._users.lookup(user)
        if not hit or row is None or row.disabled:
            return None
        if epoch is not None and epoch != row.session_epoch:
            return None
        try:
            return self.users.principal(row, address, org)
        except OrgRefused:
            return None

    def basic(self, header_value: str, address: str | None) -> tuple[str, str]:
        try:
            raw = base64.b64decode(header_value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise AuthenticationFailed("malformed Basic credentials") from exc
        name, sep, password = raw.partition(":")
        if not sep:
            raise AuthenticationFailed("malformed Basic credentials")
        return name, password

    def _user(
        self,
        name: str,
        address: str | None,
        session_epoch: object = None,
        org: str | None = None,
    ) -> Principal:
        row = self._users.get(name, lambda: sec.get_user(self._index, name))
        if row is None or row.disabled:
            raise AuthenticationFailed("the user of this token does not exist or is disabled")
        if session_epoch is not None and session_epoch != row.session_epoch:
            # Issued before the password was changed or the user was logged out everywhere.
            raise AuthenticationFailed("this session has ended; log in again")
        try:
            return self.users.principal(row, address, org)
        except OrgRefused as exc:  # the role or trust was taken away during the session
            raise AuthenticationFailed(f"{exc.message}; log in again") from exc

    def _api_token(self, token: str, address: str | None) -> Principal:
        digest = tokens.api_token_digest(token)
        found = self._tokens.get(digest, lambda: sec.find_api_token(self._index, digest))
        if found is None:
            raise AuthenticationFailed("unknown or revoked API token")
        user, expires = found
        if expires is not None:
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
            if expires <= datetime.now(UTC):
                raise AuthenticationFailed("the API token has expired")
        return self._user(user, address)

    def _with_userinfo(self, token: str) -> dict[str, Any]:
        """The verified claims of an OIDC token, with the national RBAC claims of the issuer's
        userinfo answer when the token has none and SOLENT_OIDC_USERINFO_ENDPOINT is set."""
        assert self.oidc is not None
        claims = self.oidc.verify(token)
        url = self.settings.oidc_userinfo_endpoint
        if not url or self.users.national is None or "nhsid_nrbac_roles" in claims:
            return claims
        sub = claims["sub"]
        extra = self._userinfo.get(
            tokens.api_token_digest(token), lambda: read_userinfo(url, token, sub)
        )
        return {**claims, **extra}

    def _oidc_principal(self, claims: dict[str, object], address: str | None) -> Principal:
        if self.users.national is not None and "nhsid_nrbac_roles" in claims:
            return self._national_principal(claims, address)
        name = claims.get("preferred_username") or claims.get("sub")
        trust = claims.get("trust")
        raw_roles = claims.get("roles") or []
        known = {r.value for r in Role}
        roles = frozenset(
            str(r) for r in (raw_roles if isinstance(raw_roles, list) else []) if str(r) in known
        )
        if not isinstance(name, str) or not name:
            raise AuthenticationFailed("the token names no user")
        if not isinstance(trust, str) or self._index.get_trust(trust) is None:
            raise AuthenticationFailed("the token's 'trust' claim names no registered trust")
        return Principal(PrincipalKind.USER, name[:200], trust, roles, address)

    def _national_principal(self, claims: dict[str, object], address: str | None) -> Principal:
        """R33 with a CIS2-like issuer: the role the user selected at sign-in (claim
        ``selected_roleid``, scope ``selectedrole``) among ``nhsid_nrbac_roles`` (scope
        ``nationalrbacaccess``), resolved by the consortium's policy."""
        policy = self.users.national
        assert policy is not None
        name = claims.get("preferred_username") or claims.get("sub")
        if not isinstance(name, str) or not name:
            raise AuthenticationFailed("the token names no user")
        roles = national_roles_of(claims.get("nhsid_nrbac_roles"))
        if not roles:
            raise AuthenticationFailed("the token's nhsid_nrbac_roles holds no usable role")
        selected = claims.get("selected_roleid")
        if selected is not None:
            chosen = [r for r in roles if r.person_role_id == str(selected)]
            if not chosen:
                raise AuthenticationFailed(
                    "the selected role (selected_roleid) is not one of the token's national "
                    "roles (nhsid_nrbac_roles)"
                )
        elif len(roles) == 1:
            chosen = roles
        else:
            orgs = ", ".join(sorted({r.org for r in roles}))
            raise AuthenticationFailed(
                f"the token holds national roles at {orgs} and selects none: sign in again "
                "choosing a role (ask the issuer for the 'selectedrole' scope)"
            )
        role = chosen[0]
        if self._index.get_trust(role.org) is None:
            raise AuthenticationFailed(
                f"the selected role's organisation {role.org} is not a trust of this consortium"
            )
        found = policy.resolve(role)
        return Principal(
            PrincipalKind.USER, name[:200], role.org, found.roles, address, national=found
        )


def _launched(principal: Principal, claims: dict[str, Any]) -> Principal:
    """``principal`` limited to a SMART launch's patient and scopes when the token has them."""
    try:
        launch = launch_of(claims)
    except LaunchInvalid as exc:
        raise AuthenticationFailed(str(exc)) from exc
    return principal if launch is None else dataclasses.replace(principal, launch=launch)


def national_roles_of(value: object) -> list[NationalRole]:
    """The roles of a CIS2 ``nhsid_nrbac_roles`` claim: entries with ``person_roleid``,
    ``org_code``, ``role_code`` (``S8000:G8000:R8000``) and optional ``activity_codes``;
    malformed entries are skipped (they grant nothing)."""
    out: list[NationalRole] = []
    for entry in value if isinstance(value, list) else []:
        if not isinstance(entry, dict):
            continue
        org, code, prid = entry.get("org_code"), entry.get("role_code"), entry.get("person_roleid")
        job_role = job_role_of(code) if isinstance(code, str) else None
        if not isinstance(org, str) or not org or job_role is None:
            continue
        raw = entry.get("activity_codes")
        activities = (
            frozenset(str(a) for a in raw if isinstance(a, str))
            if isinstance(raw, list)
            else frozenset()
        )
        out.append(NationalRole(org[:16], job_role, activities, str(prid) if prid else None))
    return out
