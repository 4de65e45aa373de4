"""Requests holding a NUL character (U+0000) are refused with a 400 before any route runs.

No identifier, name or text this archive keeps may hold one, and PostgreSQL stores and compares
no text that does: a ``%00`` in a query parameter or path, or a ``"\\u0000"`` in a JSON body,
reached the database and answered 500 (QIDO, the viewer's search, the identity API ...). This
checks every HTTP route once: the decoded path and query string, and a JSON request body.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REFUSAL = "the request holds a NUL character (%00 or \\u0000), which no value may contain"


def _holds_nul(value: Any) -> bool:
    """Whether any string of a parsed JSON value holds NUL; walked without recursion, as a
    value nested as deep as json.loads reads would exceed Python's recursion limit here."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _json_body(scope: Scope) -> bool:
    for key, value in scope.get("headers", []):
        if key == b"content-type":
            mime: bytes = value.split(b";", 1)[0].strip().lower()
            return mime == b"application/json" or mime.endswith(b"+json")
    return False


class NulGuard:
    """ASGI middleware: 400 for a NUL anywhere in the path, the query or a JSON body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope.get("path", "") or b"\x00" in unquote_to_bytes(
            scope.get("query_string", b"")
        ):
            await JSONResponse({"detail": REFUSAL}, status_code=400)(scope, receive, send)
            return
        if not _json_body(scope):
            await self.app(scope, receive, send)
            return
        # A JSON body (the API's: small, and bounded by the security layer's body limit) is
        # read whole, checked, and handed on as it came.
        held: list[Message] = []
        body = b""
        while True:
            message = await receive()
            held.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if b"\x00" in body or (b"\\u0000" in body and _parsed_holds_nul(body)):
            await JSONResponse({"detail": REFUSAL}, status_code=400)(scope, receive, send)
            return

        async def replay() -> Message:
            return held.pop(0) if held else await receive()

        await self.app(scope, replay, send)


def _parsed_holds_nul(body: bytes) -> bool:
    try:
        return _holds_nul(json.loads(body))
    except (ValueError, RecursionError):  # RecursionError: nested too deep to read
        return False  # not JSON (or not readable as such): the route answers that
