"""HTTP enforcement: every route but /health needs an authenticated principal.

A pure ASGI middleware (so it also covers mounted sub-apps and routers added later by any
adapter) authenticates the ``Authorization`` header, applies the per-principal rate limit and
the body-size / multipart-part limits, and puts the Principal on ``request.state.principal``.
Routes get it with the ``current_principal`` dependency::

    from solent.security.http import current_principal
    def route(principal: Annotated[Principal, Depends(current_principal)]) -> ...
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote_from_bytes

from fastapi import FastAPI, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from solent.domain.principal import Principal, PrincipalKind
from solent.errors import InvalidInput
from solent.security.authn import AuthenticationFailed, Authenticator
from solent.services.audit import AuditAction, AuditOutcome
from solent.services.registry import Services

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Paths anyone may reach. Everything else, including routes added later, needs a principal.
# /api/auth/oidc: what the viewer's sign-in needs to send a user to the IdP (no secret).
# /fhir/.well-known/smart-configuration: SMART App Launch discovery (R23; no secret).
PUBLIC_PATHS = frozenset(
    {
        "/health",
        "/health/ready",
        "/viewer",
        "/api/auth/oidc",
        "/fhir/.well-known/smart-configuration",
    }
)
# The viewer's static app shell (no patient data; everything it reads needs a bearer token).
PUBLIC_PREFIXES = ("/viewer/",)
# Where a password (HTTP Basic) is exchanged for a bearer token; the only place Basic works.
LOGIN_PATH = "/api/auth/token"
#: Why the caller reads (``mdt:<meeting id>``); written into their audit records when accepted.
PURPOSE_HEADER = "x-solent-purpose"
# IHE IID launches an EPR opens in a plain browser (no token): the viewer signs the user in and
# runs the launch itself (#/launch[/TRUST]?query). Only a browser's page load goes there; any
# other caller without a token still gets 401.
BROWSER_LAUNCH = re.compile(r"^(?:/trusts/([A-Za-z0-9_-]{1,16}))?/IHEInvokeImageDisplay$")


class RequestTooLarge(HTTPException):
    """The body or its multipart part count exceeds the configured limits (413)."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


def current_principal(request: Request) -> Principal:
    """FastAPI dependency: the authenticated caller (401 if the middleware did not set one)."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise HTTPException(
            status_code=401,
            detail="authentication required",
            headers={"WWW-Authenticate": 'Bearer realm="solent"'},
        )
    return principal


class RateLimiter:
    """A token bucket per principal (per process): ``rate`` per second, bursts of 2 s."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * 2)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                return False
            self._buckets[key] = (tokens - 1, now)
            if len(self._buckets) > 100_000:  # forget idle callers rather than grow forever
                self._buckets.clear()
            return True


class _PartCounter:
    """Counts multipart delimiters in a streamed body without buffering it."""

    def __init__(self, boundary: bytes) -> None:
        self.delimiter = b"--" + boundary
        self.tail = b""
        self.count = 0

    def feed(self, chunk: bytes) -> int:
        data = self.tail + chunk
        self.count += data.count(self.delimiter)
        keep = len(self.delimiter) - 1
        self.tail = data[-keep:] if keep else b""
        return max(0, self.count - 1)  # the closing delimiter ends the last part


def _boundary(headers: dict[str, str]) -> bytes | None:
    ctype = headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/"):
        return None
    for param in ctype.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary" and value:
            return value.strip('"').encode("latin-1", "replace")
    return None


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, archive: Services, authenticator: Authenticator) -> None:
        self.app = app
        self.archive = archive
        self.authenticator = authenticator
        settings = archive.settings
        self.limiter = RateLimiter(settings.rate_limit_per_second)
        self.max_body = settings.max_body_bytes
        self.max_parts = settings.max_multipart_parts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if (launch := _browser_launch(scope, path, headers)) is not None:
            await _redirect(send, launch)
            return
        if scope.get("method") == "OPTIONS" and "access-control-request-method" in headers:
            # A CORS preflight: browsers never send credentials on it, and it carries no data.
            await self.app(scope, receive, send)
            return
        try:
            principal = self._remembered(headers, address)
            if principal is None:
                principal = await run_in_threadpool(self._authenticate, headers, path, address)
        except AuthenticationFailed as exc:
            if not self.limiter.allow(f"addr:{address}"):
                await _reply(send, 429, "too many failed requests; slow down", retry=True)
                return
            await run_in_threadpool(self._audit_failure, str(exc), path, address)
            await _reply(send, 401, f"authentication required: {exc}", challenge=True)
            return
        if not self.limiter.allow(principal.describe()):
            await _reply(send, 429, "rate limit exceeded for this user; retry shortly", retry=True)
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _reply(send, 413, f"request body larger than {self.max_body} bytes")
            return
        claim = headers.get(PURPOSE_HEADER)
        if claim is not None:
            # A participant's reads during an MDT meeting: the MDT service decides whether the
            # claim holds (then their audit records carry it) or is ignored.
            mdt = self.archive.mdt
            accepted = mdt.remembered_purpose(principal, claim)
            if accepted is None:
                try:
                    accepted = await run_in_threadpool(mdt.purpose_for, principal, claim)
                except InvalidInput as exc:
                    await _reply(send, 400, str(exc))
                    return
            principal = accepted
        scope.setdefault("state", {})["principal"] = principal
        counter = _PartCounter(b) if (b := _boundary(headers)) else None
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.max_body:
                    raise RequestTooLarge(f"request body larger than {self.max_body} bytes")
                if counter is not None and counter.feed(chunk) > self.max_parts:
                    raise RequestTooLarge(f"more than {self.max_parts} multipart parts")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except RequestTooLarge as exc:
            if not started:
                await _reply(send, 413, str(exc.detail))

    def _remembered(self, headers: dict[str, str], address: str | None) -> Principal | None:
        """A bearer token's principal from the authenticator's memory, without a thread
        hand-off (a viewer's hundreds of frames a second); None: authenticate in a thread."""
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.authenticator.remembered(credential, address)

    def _authenticate(self, headers: dict[str, str], path: str, address: str | None) -> Principal:
        value = headers.get("authorization", "")
        scheme, _, credential = value.partition(" ")
        if scheme.lower() == "bearer":
            return self.authenticator.bearer(credential, address)
        if scheme.lower() == "basic" and path == LOGIN_PATH:
            # Checked again (and audited) by the login route; here only "who is it".
            name, _password = self.authenticator.basic(credential, address)
            return Principal(PrincipalKind.USER, name[:64], None, address=address)
        if not value:
            raise AuthenticationFailed("send Authorization: Bearer <token>")
        raise AuthenticationFailed("use Authorization: Bearer <token>")

    def _audit_failure(self, why: str, path: str, address: str | None) -> None:
        who = Principal(PrincipalKind.USER, "(unauthenticated)", None, address=address)
        self.archive.audit.record(
            who,
            AuditAction.LOGIN_FAILED,
            AuditOutcome.DENIED,
            detail={"why": why[:200], "path": path[:200]},
        )


def _browser_launch(scope: Scope, path: str, headers: dict[str, str]) -> str | None:
    """The viewer's launch route for a browser opening an IID URL without credentials."""
    match = BROWSER_LAUNCH.match(path)
    if (
        match is None
        or "authorization" in headers
        or scope.get("method") not in ("GET", "HEAD")
        or "text/html" not in headers.get("accept", "")
    ):
        return None
    trust = f"/{match.group(1)}" if match.group(1) else ""
    # Only URL characters go into the Location header; anything else is percent-encoded.
    query = quote_from_bytes(scope.get("query_string", b""), safe="=&%+;,:@/?!$'()*-._~")
    return f"/viewer/#/launch{trust}" + (f"?{query}" if query else "")


async def _redirect(send: Send, location: str) -> None:
    headers = [
        (b"location", location.encode("ascii")),
        (b"content-length", b"0"),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _reply(
    send: Send, status: int, detail: str, *, challenge: bool = False, retry: bool = False
) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if challenge:
        headers.append((b"www-authenticate", b'Bearer realm="solent"'))
    if retry:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def install_security(app: FastAPI, archive: Services) -> None:
    """Require authentication on every route but /health."""
    users = archive.users
    authenticator = archive.authenticator
    app.state.users = users
    app.state.authenticator = authenticator
    app.add_middleware(SecurityMiddleware, archive=archive, authenticator=authenticator)
