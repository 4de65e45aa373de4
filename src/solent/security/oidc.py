"""OpenID Connect bearer tokens: signature by the issuer's JWKS, issuer, audience and expiry.

Claims used: ``preferred_username`` (else ``sub``) names the user, ``trust`` the organisation
(ODS-style code of a registered trust) and ``roles`` the Solent roles (a list).

The issuer's endpoints (JWKS, authorization, token) come from the settings where given, else
from its discovery document (OpenID Connect Discovery 1.0, ``/.well-known/openid-configuration``):
an integration engineer configures NHS CIS2, Entra ID or Keycloak by its issuer alone. The
document is read when first needed, not at start-up (an identity provider that is down must
not stop the archive serving its local users), and again after `DISCOVERY_TTL_S`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

from solent.security.tokens import TokenInvalid

log = logging.getLogger(__name__)

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
DISCOVERY_PATH = "/.well-known/openid-configuration"
DISCOVERY_TTL_S = 3600.0
#: After a failed read, ask again no sooner than this (each token would otherwise wait on it).
RETRY_AFTER_S = 30.0
TIMEOUT_S = 10.0


class OidcUnavailable(Exception):
    """The issuer's endpoints are not configured and its discovery document could not be read;
    the message says what to check or set."""


@dataclass(frozen=True, slots=True)
class Endpoints:
    jwks_uri: str
    authorization_endpoint: str
    token_endpoint: str


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and urlsplit(value).scheme in ("https", "http") and "//" in value


class OidcIssuer:
    """Where the issuer publishes its keys and where the viewer sends a user to sign in."""

    def __init__(
        self,
        issuer: str,
        *,
        jwks_url: str = "",
        authorization_endpoint: str = "",
        token_endpoint: str = "",
        timeout: float = TIMEOUT_S,
    ) -> None:
        self.issuer = issuer
        self._given = Endpoints(jwks_url, authorization_endpoint, token_endpoint)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._found: tuple[float, Endpoints] | None = None
        self._failed: tuple[float, str] | None = None

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + DISCOVERY_PATH

    def endpoints(self) -> Endpoints:
        """The configured endpoints, any missing one from the discovery document."""
        given = self._given
        if given.jwks_uri and given.authorization_endpoint and given.token_endpoint:
            return given
        found = self._discovered()
        return Endpoints(
            given.jwks_uri or found.jwks_uri,
            given.authorization_endpoint or found.authorization_endpoint,
            given.token_endpoint or found.token_endpoint,
        )

    def jwks_uri(self) -> str:
        """Where the signing keys are: all a resource server needs (no discovery when set)."""
        return self._given.jwks_uri or self._discovered().jwks_uri

    def _discovered(self) -> Endpoints:
        with self._lock:
            now = time.monotonic()
            if self._found is not None and now - self._found[0] < DISCOVERY_TTL_S:
                return self._found[1]
            if self._failed is not None and now - self._failed[0] < RETRY_AFTER_S:
                if self._found is not None:  # a stale document beats none while it is down
                    return self._found[1]
                raise OidcUnavailable(self._failed[1])
            try:
                endpoints = self._read()
            except OidcUnavailable as exc:
                log.warning("%s", exc)
                self._failed = (now, str(exc))
                if self._found is not None:
                    return self._found[1]
                raise
            self._found, self._failed = (now, endpoints), None
            return endpoints

    def _read(self) -> Endpoints:
        url = self.discovery_url
        hint = (
            "; check SOLENT_OIDC_ISSUER, or set SOLENT_OIDC_JWKS_URL, "
            "SOLENT_OIDC_AUTHORIZATION_ENDPOINT and SOLENT_OIDC_TOKEN_ENDPOINT"
        )
        try:
            response = httpx.get(url, timeout=self._timeout, follow_redirects=False)
            response.raise_for_status()
            doc = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OidcUnavailable(
                f"the OIDC issuer's discovery document {url} could not be read "
                f"({type(exc).__name__}: {exc}){hint}"
            ) from exc
        if not isinstance(doc, dict):
            raise OidcUnavailable(f"{url} is not a JSON object{hint}")
        # Discovery 1.0 section 4.3: the document must name exactly the issuer asked for, or
        # a look-alike host could hand out its own keys.
        if doc.get("issuer") != self.issuer:
            raise OidcUnavailable(
                f"{url} names issuer {doc.get('issuer')!r}, not {self.issuer!r}{hint}"
            )
        fields = ("jwks_uri", "authorization_endpoint", "token_endpoint")
        bad = [f for f in fields if not _is_url(doc.get(f))]
        if bad:
            raise OidcUnavailable(f"{url} has no usable {', '.join(bad)}{hint}")
        return Endpoints(*(str(doc[f]) for f in fields))


class OidcVerifier:
    def __init__(self, issuer: OidcIssuer, audience: str) -> None:
        self.issuer = issuer.issuer
        self.endpoints = issuer
        self.audience = audience
        self._jwks: jwt.PyJWKClient | None = None

    def _keys(self) -> jwt.PyJWKClient:
        try:
            url = self.endpoints.jwks_uri()
        except OidcUnavailable as exc:
            raise TokenInvalid(f"the token's issuer cannot be checked now: {exc}") from exc
        if self._jwks is None or self._jwks.uri != url:
            self._jwks = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=10)
        return self._jwks

    def verify(self, token: str) -> dict[str, Any]:
        try:
            key = self._keys().get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
                leeway=30,
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenInvalid("the token has expired") from exc
        except jwt.PyJWKClientError as exc:
            raise TokenInvalid(
                f"the token's signing key is not in the issuer's JWKS: {exc}"
            ) from exc
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid(f"the token is not valid: {type(exc).__name__}") from exc
        return claims


#: The userinfo claims Solent reads (R33): the national roles and the role selected at sign-in.
USERINFO_CLAIMS = ("nhsid_nrbac_roles", "selected_roleid")


def read_userinfo(url: str, token: str, sub: object, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """The national RBAC claims of the issuer's userinfo answer for ``token`` (NHS CIS2 puts
    ``nhsid_nrbac_roles`` there rather than in its access tokens). OpenID Connect Core 5.3.2:
    the answer's ``sub`` must be the token's, or it is about someone else."""
    try:
        response = httpx.get(
            url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout,
            follow_redirects=False,
        )
        response.raise_for_status()
        doc = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise TokenInvalid(
            f"the issuer's userinfo endpoint could not be read ({type(exc).__name__}); "
            "check SOLENT_OIDC_USERINFO_ENDPOINT"
        ) from exc
    if not isinstance(doc, dict) or doc.get("sub") != sub:
        raise TokenInvalid("the issuer's userinfo answer is not about this token's subject")
    return {k: doc[k] for k in USERINFO_CLAIMS if k in doc}
