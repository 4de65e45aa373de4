"""Authentication over HTTP: every route but /health refuses a caller without valid credentials."""

from __future__ import annotations

import json
import re
import stat
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.routing import APIRoute, APIWebSocketRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount

from solent.app import Archive, build_archive
from solent.domain.principal import SYSTEM
from solent.errors import ConfigurationError
from solent.protocols.http import create_app
from solent.security import tokens
from solent.security.keys import SigningKey, key_path, load_signing_key
from solent.settings import Settings, load_settings
from tests.unit.security_fixtures import PASSWORD, add_user, client, users

__all__ = ["client"]

# The viewer's static app shell holds no patient data; everything it reads needs a token.
PUBLIC = {
    "/health",
    "/health/ready",
    "/viewer",
    "/viewer/{path:path}",
    "/api/auth/oidc",
    "/fhir/.well-known/smart-configuration",
}


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1.2.3", path)


def all_routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every route, through included routers and mounts."""
    for route in routes:
        if hasattr(route, "original_router"):  # FastAPI's included router
            yield from all_routes(
                route.original_router.routes, prefix + route.include_context.prefix
            )
        elif isinstance(route, Mount):
            sub = getattr(route.app, "routes", None)
            if sub:
                yield from all_routes(sub, prefix + route.path)
            yield prefix + route.path + "/x", {"GET"}
        elif isinstance(route, APIWebSocketRoute):  # issue 12: the MDT live rooms
            yield prefix + route.path, {"WEBSOCKET"}
        elif isinstance(route, APIRoute) or hasattr(route, "methods"):
            yield prefix + route.path, set(route.methods or {"GET"}) - {"HEAD", "OPTIONS"}
        else:
            raise AssertionError(f"a route of an unknown kind: {route!r}")


def test_every_route_but_health_refuses_unauthenticated(client: TestClient) -> None:
    """Enumerates the app's routes, so a route added by any adapter cannot escape."""
    checked = 0
    seen: set[str] = set()
    for path, methods in all_routes(client.app.routes):  # type: ignore[attr-defined]
        seen.add(path)
        for method in methods:
            url = _concrete(path)
            if path in PUBLIC:
                continue
            if method == "WEBSOCKET":  # the token comes in the query string (browsers)
                for query in ("", "?token=not-a-token"):
                    with client.websocket_connect(re.sub(r"\{[^}]+\}", "1", path) + query) as ws:
                        assert ws.receive_json()["type"] == "error"
                        assert ws.receive()["code"] == 4401, (path, query)
                checked += 1
                continue
            for headers in ({}, {"Authorization": "Bearer not-a-token"}):
                r = client.request(method, url, headers=headers)
                assert r.status_code == 401, (method, url, headers, r.status_code, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer")
            checked += 1
    # The API, security routes, metrics and docs are all enumerated.
    assert {"/api/studies", "/api/audit", "/api/break-glass", "/metrics"} <= seen
    assert checked >= 15
    assert client.get("/health").status_code == 200
    # Paths no route declares are refused before routing too.
    assert client.get("/dicomweb/studies").status_code == 401
    assert client.get("/no/such/route").status_code == 401


def test_valid_local_token_is_accepted(archive: Archive, client: TestClient) -> None:
    headers = add_user(archive, "drza", "ZZA", "clinician")
    r = client.get("/api/auth/me", headers=headers)
    assert r.status_code == 200
    assert r.json()["name"] == "drza" and r.json()["trust"] == "ZZA"
    assert r.json()["roles"] == ["clinician"]


def test_expired_token_is_refused(archive: Archive, client: TestClient) -> None:
    add_user(archive, "drza", "ZZA", "clinician")
    key = load_signing_key(archive.settings)
    expired, _ = tokens.issue_local(key, "drza", timedelta(seconds=-60))
    r = client.get("/api/auth/me", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401
    assert "expired" in r.json()["detail"]


def test_forged_tokens_are_refused(archive: Archive, client: TestClient) -> None:
    add_user(archive, "drza", "ZZA", "clinician")
    other_key = SigningKey("EdDSA", Ed25519PrivateKey.generate(), b"")
    forged, _ = tokens.issue_local(other_key, "drza", timedelta(minutes=5))
    good = users(archive).issue("drza", SYSTEM).token
    add_user(archive, "boss", "ZZA", "pacs_admin")
    header, _payload, sig = good.split(".")
    claims = jwt.decode(good, options={"verify_signature": False})
    claims["sub"] = "boss"  # an existing, more powerful user
    import base64

    tampered_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    tampered = f"{header}.{tampered_payload}.{sig}"
    unsigned = jwt.encode({**claims, "sub": "drza"}, key=None, algorithm="none")
    hs_with_public = jwt.encode(claims, "guess", algorithm="HS256")
    for bad in (forged, tampered, unsigned, hs_with_public, good[:-4] + "AAAA"):
        r = client.get("/api/auth/me", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401, bad
    assert (
        client.get("/api/auth/me", headers={"Authorization": f"Bearer {good}"}).status_code == 200
    )


def test_disabled_user_is_refused_at_once(archive: Archive, client: TestClient) -> None:
    headers = add_user(archive, "drza", "ZZA", "clinician")
    assert client.get("/api/auth/me", headers=headers).status_code == 200
    users(archive).disable(SYSTEM, "drza")
    assert client.get("/api/auth/me", headers=headers).status_code == 401
    r = client.post("/api/auth/token", auth=("drza", PASSWORD))
    assert r.status_code == 401


def test_password_login_issues_a_token_and_failures_are_audited(
    archive: Archive, client: TestClient
) -> None:
    add_user(archive, "drza", "ZZA", "clinician")
    r = client.post("/api/auth/token", auth=("drza", PASSWORD))
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert (
        client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    )
    assert client.post("/api/auth/token", auth=("drza", "wrong password!!")).status_code == 401
    assert client.post("/api/auth/token", auth=("nobody", PASSWORD)).status_code == 401
    # Basic works only at the login route.
    assert client.get("/api/auth/me", auth=("drza", PASSWORD)).status_code == 401
    actions = [(r["action"], r["outcome"], r["actor_name"]) for r in archive.audit.search()]
    assert ("login", "success", "drza") in actions
    assert ("login-failed", "denied", "drza") in actions
    assert ("login-failed", "denied", "nobody") in actions
    # Guessing is slowed down: after a few failures even the right password must wait.
    codes = [
        client.post("/api/auth/token", auth=("drza", f"guess-{i}-xxxxxx")).status_code
        for i in range(8)
    ]
    assert codes[-1] == 429 and 401 in codes
    assert client.post("/api/auth/token", auth=("drza", PASSWORD)).status_code == 429
    stored = users(archive).get("drza")
    assert stored is not None and stored.password_hash is not None
    assert stored.password_hash.startswith("$argon2id$") and PASSWORD not in stored.password_hash


def test_api_tokens_for_services(archive: Archive, client: TestClient) -> None:
    svc = users(archive)
    svc.add(SYSTEM, "ris-zzb", "ZZB", ("integration",), None)
    issued = svc.issue_api_token(SYSTEM, "ris-zzb", "RIS of ZZB", days=30)
    r = client.get("/api/auth/me", headers={"Authorization": f"Bearer {issued.token}"})
    assert r.status_code == 200 and r.json()["roles"] == ["integration"]
    # A service account has no password, so it cannot log in with one.
    assert client.post("/api/auth/token", auth=("ris-zzb", "")).status_code == 401
    unknown = tokens.new_api_token()
    assert (
        client.get("/api/auth/me", headers={"Authorization": f"Bearer {unknown}"}).status_code
        == 401
    )
    # Only the digest is stored.
    with archive.index.engine.connect() as conn:
        dump = "\n".join(str(r) for r in conn.exec_driver_sql("SELECT * FROM api_token"))
    assert issued.token not in dump


def test_signing_key_is_private(archive: Archive, settings: Settings) -> None:
    load_signing_key(settings)
    path = key_path(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Loading again reuses the same key: tokens survive a restart.
    a = load_signing_key(settings)
    b = load_signing_key(settings)
    assert a.public.public_bytes_raw() == b.public.public_bytes_raw()  # type: ignore[union-attr]


def test_no_default_password(archive: Archive) -> None:
    from solent.errors import InvalidInput

    with pytest.raises(InvalidInput):
        users(archive).add(SYSTEM, "weak", "ZZA", ("clinician",), "short")
    assert users(archive).list() == []


# -- OpenID Connect -----------------------------------------------------------------------


class _Jwks(BaseHTTPRequestHandler):
    body = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def idp() -> Iterator[tuple[str, rsa.RSAPrivateKey]]:
    """A JWKS endpoint on loopback serving one RSA key, like an OIDC provider's."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    handler = type("Jwks", (_Jwks,), {"body": json.dumps({"keys": [jwk]}).encode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/certs", key
    server.shutdown()


def test_oidc_bearer_tokens(tmp_path: Any, idp: tuple[str, rsa.RSAPrivateKey]) -> None:
    jwks_url, key = idp
    issuer = "https://idp.example.nhs.uk/realms/solent"
    settings = load_settings(
        environ={},
        data_dir=tmp_path / "var",
        oidc_issuer=issuer,
        oidc_audience="solent-pacs",
        oidc_jwks_url=jwks_url,
    )
    archive = build_archive(settings)
    archive.index.add_trust("ZZA", "Trust A")
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": "solent-pacs",
        "sub": "f:1234",
        "preferred_username": "dr.oidc",
        "trust": "ZZA",
        "roles": ["radiologist", "superuser"],
        "iat": now,
        "exp": now + 300,
    }

    def bearer(c: dict[str, Any], signer: Any = key) -> dict[str, str]:
        return {"Authorization": "Bearer " + jwt.encode(c, signer, "RS256", headers={"kid": "k1"})}

    try:
        with TestClient(create_app(archive)) as client:
            r = client.get("/api/auth/me", headers=bearer(claims))
            assert r.status_code == 200, r.text
            assert r.json()["name"] == "dr.oidc" and r.json()["roles"] == ["radiologist"]
            stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            for bad in (
                bearer({**claims, "aud": "another-app"}),
                bearer({**claims, "exp": now - 120}),
                bearer({**claims, "trust": "NOPE"}),
                bearer(claims, signer=stranger),
            ):
                assert client.get("/api/auth/me", headers=bad).status_code == 401
    finally:
        archive.close()


# -- hostile input -------------------------------------------------------------------------


def _app(tmp_path: Any, **overrides: Any) -> tuple[Archive, TestClient]:
    settings = load_settings(environ={}, data_dir=tmp_path / "var", **overrides)
    archive = build_archive(settings)
    archive.index.add_trust("ZZA", "Trust A")
    return archive, TestClient(create_app(archive))


def test_rate_limit_per_principal(tmp_path: Any) -> None:
    archive, client = _app(tmp_path, rate_limit_per_second=2.0)
    try:
        a = add_user(archive, "drza", "ZZA", "clinician")
        b = add_user(archive, "drzb", "ZZA", "clinician")
        codes = [client.get("/api/auth/me", headers=a).status_code for _ in range(30)]
        assert 429 in codes and codes[0] == 200
        # Another principal has its own budget.
        assert client.get("/api/auth/me", headers=b).status_code == 200
    finally:
        archive.close()


def test_body_and_multipart_limits(tmp_path: Any) -> None:
    archive, client = _app(tmp_path, max_body_bytes=4096, max_multipart_parts=3)
    try:
        h = add_user(archive, "admin", "ZZA", "pacs_admin")
        big = {"name": "x", "trust": "ZZA", "roles": ["clinician"], "password": "p" * 5000}
        r = client.post("/api/users", headers=h, json=big)
        assert r.status_code == 413
        # A chunked body (no Content-Length) is cut off while streaming.
        r = client.post(
            "/api/users",
            headers={**h, "Content-Type": "application/json"},
            content=iter([b"{" + b" " * 3000, b" " * 3000 + b"}"]),
        )
        assert r.status_code == 413
        boundary = "XyZ"
        parts = "".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\nabc\r\n" for _ in range(5)
        )
        body = (parts + f"--{boundary}--\r\n").encode()
        r = client.post(
            "/api/users",
            headers={
                **h,
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            },
            content=body,
        )
        assert r.status_code == 413 and "multipart" in r.json()["detail"]
        assert [u.name for u in users(archive).list()] == ["admin"]
    finally:
        archive.close()


def test_oidc_sign_in_settings_are_public_and_complete(tmp_path: Any) -> None:
    """The viewer learns without a token whether to offer single sign-on, and where to send
    the user; a client id without the issuer's endpoints is a configuration error."""
    archive, client = _app(tmp_path)
    try:
        r = client.get("/api/auth/oidc")
        assert r.status_code == 200 and r.json() == {"enabled": False}
    finally:
        archive.close()
    issuer = "https://idp.example.nhs.uk/realms/solent"
    sso = {
        "oidc_issuer": issuer,
        "oidc_audience": "solent-pacs",
        "oidc_jwks_url": f"{issuer}/certs",
        "oidc_client_id": "solent-viewer",
        "oidc_authorization_endpoint": f"{issuer}/auth",
        "oidc_token_endpoint": f"{issuer}/token",
        "oidc_display_name": "NHS Login",
    }
    archive, client = _app(tmp_path / "sso", **sso)
    try:
        r = client.get("/api/auth/oidc")
        assert r.status_code == 200
        assert r.json() == {
            "enabled": True,
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/auth",
            "token_endpoint": f"{issuer}/token",
            "client_id": "solent-viewer",
            "scopes": "openid profile",
            "display_name": "NHS Login",
            "token": "access_token",
        }
    finally:
        archive.close()
    with pytest.raises(ConfigurationError, match="needs oidc_issuer"):
        load_settings(environ={}, data_dir=tmp_path, **{**sso, "oidc_issuer": ""})


class _DiscoveringIdp(BaseHTTPRequestHandler):
    """An issuer that publishes only its discovery document and keys (as Keycloak, Entra ID
    or NHS CIS2 do); ``named`` is the issuer its document claims."""

    named = ""
    jwks = b"{}"
    reads: list[str] = []

    def do_GET(self) -> None:
        host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.reads.append(self.path)
        if self.path == "/.well-known/openid-configuration":
            body = json.dumps(
                {
                    "issuer": self.named or host,
                    "authorization_endpoint": f"{host}/authorize",
                    "token_endpoint": f"{host}/token",
                    "jwks_uri": f"{host}/keys",
                }
            ).encode()
        elif self.path == "/keys":
            body = self.jwks
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_oidc_endpoints_from_the_issuers_discovery_document(tmp_path: Any) -> None:
    """Configured by its issuer alone, the archive reads the issuer's endpoints from its
    discovery document: the viewer is told where to sign in and tokens are checked against
    the published keys. A document naming another issuer is not trusted, and an issuer that
    cannot be reached leaves local sign-in working with a readable 503 for single sign-on."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    reads: list[str] = []
    servers = []

    def start(named: str = "") -> str:
        handler = type(
            "Idp",
            (_DiscoveringIdp,),
            {"named": named, "jwks": json.dumps({"keys": [jwk]}).encode(), "reads": reads},
        )
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    def token(issuer: str) -> dict[str, str]:
        now = int(time.time())
        claims = {
            "iss": issuer,
            "aud": "solent-pacs",
            "sub": "cis2:555",
            "preferred_username": "dr.cis2",
            "trust": "ZZA",
            "roles": ["clinician"],
            "iat": now,
            "exp": now + 300,
        }
        signed = jwt.encode(claims, key, "RS256", headers={"kid": "k1"})
        return {"Authorization": f"Bearer {signed}"}

    def sso(issuer: str, **more: str) -> dict[str, str]:
        return {
            "oidc_issuer": issuer,
            "oidc_audience": "solent-pacs",
            "oidc_client_id": "solent-viewer",
            **more,
        }

    try:
        issuer = start()
        archive, client = _app(tmp_path / "a", **sso(issuer))
        try:
            with client:
                r = client.get("/api/auth/oidc")
                assert r.status_code == 200, r.text
                assert r.json()["authorization_endpoint"] == f"{issuer}/authorize"
                assert r.json()["token_endpoint"] == f"{issuer}/token"
                me = client.get("/api/auth/me", headers=token(issuer))
                assert me.status_code == 200, me.text
                assert me.json()["name"] == "dr.cis2"
                # Read once, then remembered: a token per request does not ask the issuer.
                client.get("/api/auth/oidc")
                assert reads.count("/.well-known/openid-configuration") == 1
        finally:
            archive.close()

        # Endpoints set in the settings win over the document.
        archive, client = _app(
            tmp_path / "b", **sso(issuer, oidc_authorization_endpoint="https://sso.nhs.uk/a")
        )
        try:
            r = client.get("/api/auth/oidc")
            assert r.json()["authorization_endpoint"] == "https://sso.nhs.uk/a"
            assert r.json()["token_endpoint"] == f"{issuer}/token"
        finally:
            archive.close()

        # A look-alike: the document at this address claims to be another issuer.
        impostor = start(named="https://sso.nhs.uk/realms/real")
        archive, client = _app(tmp_path / "c", **sso(impostor))
        try:
            with client:
                r = client.get("/api/auth/oidc")
                assert r.status_code == 503 and "names issuer" in r.json()["detail"]
                assert client.get("/api/auth/me", headers=token(impostor)).status_code == 401
        finally:
            archive.close()

        # Nothing listening: single sign-on says why; local accounts still sign in.
        servers[0].shutdown()
        servers[0].server_close()
        archive, client = _app(tmp_path / "d", **sso(issuer))
        try:
            with client:
                r = client.get("/api/auth/oidc")
                assert r.status_code == 503
                assert "SOLENT_OIDC_ISSUER" in r.json()["detail"]
                assert client.get("/api/auth/me", headers=token(issuer)).status_code == 401
                local = add_user(archive, "drza", "ZZA", "clinician")
                assert client.get("/api/auth/me", headers=local).status_code == 200
        finally:
            archive.close()
    finally:
        for server in servers[1:]:
            server.shutdown()
