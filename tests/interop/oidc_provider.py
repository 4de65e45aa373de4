"""A minimal OpenID Connect provider on loopback, for the viewer's single sign-on tests: the
authorization code flow with PKCE (S256) for one public client, a login page, RS256 tokens
(access token for Solent's audience with the trust and roles claims, ID token with the nonce,
refresh tokens that rotate) and the JWKS the archive checks them against. Written here so the
test drives a real redirect through a real login page, as with Keycloak or Entra ID, without one
on the machine."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID = "solent-viewer"
AUDIENCE = "solent-pacs"


@dataclass(frozen=True)
class Account:
    password: str
    trust: str
    roles: tuple[str, ...]


@dataclass
class _Grant:
    user: str
    redirect_uri: str
    challenge: str
    nonce: str
    expires: float
    #: A SMART EHR launch (R23): (the scopes granted, the launch patient), else None.
    smart: tuple[str, str] | None = None


@dataclass
class OidcProvider:
    accounts: dict[str, Account]
    redirect_uris: set[str] = field(default_factory=set)
    #: Every token request's outcome ("issued", "refreshed" or the OAuth error), for the tests.
    token_requests: list[str] = field(default_factory=list)
    #: Lifetime of the tokens it issues.
    token_seconds: int = 600
    #: SMART EHR launches an EPR registered: launch id -> the launch patient (FHIR Patient id).
    launches: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid="k1", use="sig", alg="RS256")
        self.jwks = {"keys": [jwk]}
        self._pending: dict[str, dict[str, str]] = {}  # login page id -> authorize request
        self._codes: dict[str, _Grant] = {}
        # refresh token -> (user, SMART launch context)
        self._refresh_tokens: dict[str, tuple[str, tuple[str, str] | None]] = {}
        self._lock = threading.Lock()
        provider = self

        class Handler(_Handler):
            idp = provider

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def settings_env(self, display_name: str = "Test IdP") -> dict[str, str]:
        """What `solent serve` needs to accept these tokens and offer this sign-in: the issuer
        alone, as an integration engineer configures one."""
        return {
            "SOLENT_OIDC_ISSUER": self.issuer,
            "SOLENT_OIDC_AUDIENCE": AUDIENCE,
            # The endpoints and keys come from the discovery document, as with a real issuer.
            "SOLENT_OIDC_CLIENT_ID": CLIENT_ID,
            "SOLENT_OIDC_DISPLAY_NAME": display_name,
        }

    # -- the protocol ------------------------------------------------------------------------

    def authorize(self, q: dict[str, str]) -> tuple[int, str] | str:
        """A login page id for a valid request, else (status, error)."""
        if q.get("client_id") != CLIENT_ID:
            return 400, "unknown client_id"
        if q.get("redirect_uri") not in self.redirect_uris:
            return 400, "redirect_uri not registered for this client"
        if q.get("response_type") != "code" or "openid" not in q.get("scope", "").split():
            return 400, "response_type=code and scope openid expected"
        if q.get("code_challenge_method") != "S256" or len(q.get("code_challenge", "")) < 43:
            return 400, "PKCE with S256 is required"
        if "launch" in q and (q["launch"] not in self.launches or not q.get("aud")):
            return 400, "unknown launch, or no aud (the FHIR server launched for)"
        page = secrets.token_urlsafe(16)
        with self._lock:
            self._pending[page] = q
        return page

    def login(self, page: str, user: str, password: str) -> str | None:
        """The redirect back to the client with a code, or None (wrong credentials)."""
        account = self.accounts.get(user)
        with self._lock:
            q = self._pending.get(page)
            if (
                q is None
                or account is None
                or not secrets.compare_digest(account.password, password)
            ):
                return None
            del self._pending[page]
            code = secrets.token_urlsafe(24)
            smart = (q["scope"], self.launches[q["launch"]]) if "launch" in q else None
            self._codes[code] = _Grant(
                user,
                q["redirect_uri"],
                q["code_challenge"],
                q.get("nonce", ""),
                time.time() + 60,
                smart,
            )
        back = {"code": code, **({"state": q["state"]} if "state" in q else {})}
        return f"{q['redirect_uri']}?{urlencode(back)}"

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") == "refresh_token":
            return self._refresh(form)
        with self._lock:
            grant = self._codes.pop(form.get("code", ""), None)  # a code works once
        verifier = form.get("code_verifier", "").encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
        error = (
            "unsupported_grant_type"
            if form.get("grant_type") != "authorization_code"
            else "invalid_grant"
            if grant is None or grant.expires < time.time()
            else "invalid_client"
            if form.get("client_id") != CLIENT_ID
            else "invalid_grant"
            if form.get("redirect_uri") != grant.redirect_uri or digest != grant.challenge
            else None
        )
        self.token_requests.append(error or "issued")
        if error is not None or grant is None:
            return 400, {"error": error}
        return 200, self._tokens(grant.user, grant.nonce, grant.smart)

    def _refresh(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """A refresh token works once and brings a new one (rotation, as Keycloak and Entra)."""
        with self._lock:
            user, smart = self._refresh_tokens.pop(form.get("refresh_token", ""), (None, None))
        error = (
            "invalid_grant"
            if user is None
            else "invalid_client"
            if form.get("client_id") != CLIENT_ID
            else None
        )
        self.token_requests.append(error or "refreshed")
        if error is not None or user is None:
            return 400, {"error": error}
        return 200, self._tokens(user, None, smart)

    def _tokens(
        self, user: str, nonce: str | None, smart: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        account = self.accounts[user]
        now = int(time.time())
        life = self.token_seconds
        common = {
            "iss": self.issuer,
            "sub": f"idp:{user}",
            "iat": now,
            "exp": now + life,
            "jti": secrets.token_urlsafe(12),  # each token its own, as Keycloak's
        }
        access = {
            **common,
            "aud": AUDIENCE,
            "preferred_username": user,
            "trust": account.trust,
            "roles": list(account.roles),
            # SMART: the scopes granted and the launch patient (as a SMART server's JWTs carry).
            **({"scope": smart[0], "patient": smart[1]} if smart else {}),
        }
        ident = {**common, "aud": CLIENT_ID, "preferred_username": user}
        if nonce is not None:
            ident["nonce"] = nonce
        sign = lambda claims: jwt.encode(claims, self.key, "RS256", headers={"kid": "k1"})  # noqa: E731
        refresh = secrets.token_urlsafe(24)
        with self._lock:
            self._refresh_tokens[refresh] = (user, smart)
        return {
            "access_token": sign(access),
            "id_token": sign(ident),
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": life,
            **({"scope": smart[0], "patient": smart[1]} if smart else {}),
        }


class _Handler(BaseHTTPRequestHandler):
    idp: OidcProvider

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, body: Any, **headers: str) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", **headers)

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, 65536)).decode()
        return {k: v[0] for k, v in parse_qs(raw).items()}

    def _login_page(self, page: str, error: str = "") -> None:
        body = (
            "<!doctype html><html><head><meta charset='utf-8'><title>Test IdP</title></head>"
            "<body><h1>Test IdP sign-in</h1>"
            f"<p class='error'>{html.escape(error)}</p>"
            "<form method='post' action='/authorize'>"
            f"<input type='hidden' name='page' value='{html.escape(page)}'>"
            "<label>User <input name='username' id='idp-user'></label>"
            "<label>Password <input name='password' id='idp-password' type='password'></label>"
            "<button type='submit' id='idp-submit'>Sign in</button></form></body></html>"
        )
        self._send(200 if not error else 401, body.encode(), "text/html; charset=utf-8")

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/.well-known/openid-configuration":
            issuer = self.idp.issuer
            self._json(
                200,
                {
                    "issuer": issuer,
                    "authorization_endpoint": f"{issuer}/authorize",
                    "token_endpoint": f"{issuer}/token",
                    "jwks_uri": f"{issuer}/certs",
                    "response_types_supported": ["code"],
                    "code_challenge_methods_supported": ["S256"],
                },
                Access_Control_Allow_Origin="*",
            )
        elif url.path == "/certs":
            self._json(200, self.idp.jwks)
        elif url.path == "/authorize":
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            outcome = self.idp.authorize(q)
            if isinstance(outcome, tuple):
                self._send(outcome[0], outcome[1].encode(), "text/plain; charset=utf-8")
            else:
                self._login_page(outcome)
        else:
            self._send(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        form = self._form()
        if path == "/authorize":
            back = self.idp.login(
                form.get("page", ""), form.get("username", ""), form.get("password", "")
            )
            if back is None:
                self._login_page(form.get("page", ""), "wrong user name or password")
            else:
                self._send(302, b"", "text/plain", Location=back)
        elif path == "/token":
            status, body = self.idp.token(form)
            self._json(status, body, Access_Control_Allow_Origin="*")
        else:
            self._send(404, b"not found", "text/plain")

    def do_OPTIONS(self) -> None:  # CORS preflight of the token request
        self._send(
            204,
            b"",
            "text/plain",
            Access_Control_Allow_Origin="*",
            Access_Control_Allow_Methods="POST",
            Access_Control_Allow_Headers="Content-Type, Accept",
        )
