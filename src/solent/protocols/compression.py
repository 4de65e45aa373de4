"""gzip for the JSON API (/api): worklists, timelines and meeting lists are repetitive JSON
that shrinks 5-10x, which matters on a trust's WAN link. Only /api is wrapped: DICOMweb
compresses its own metadata and QIDO answers (and must never gzip multipart or octet-stream
frames, which are binary and often already compressed), and /viewer sends files compressed
at build time. Starlette's middleware honours Accept-Encoding and skips small bodies.
"""

from __future__ import annotations

from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

API_PREFIX = "/api/"
MINIMUM_SIZE = 1024  # below this the gzip header and the CPU cost more than they save


class ApiGZipMiddleware:
    """GZipMiddleware for HTTP requests under /api/, the app untouched for the rest."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=MINIMUM_SIZE, compresslevel=6)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(API_PREFIX):
            await self.gzip(scope, receive, send)
        else:
            await self.app(scope, receive, send)
