"""What every answer under /fhir looks like on the wire, whichever layer produced it.

A FHIR client (HAPI in an EPR, fhir.resources, an integration engine) reads an error's body
as an OperationOutcome. The routes answer so, but a path no route serves (an unsupported
resource type), a method they do not take, a malformed parameter and the security
middleware's 401/403 come from layers that know nothing of FHIR; this rewrites their JSON
error bodies into an OperationOutcome with the same status and headers. It also answers 406
when the client asks only for a format this server does not produce (XML; in FHIR R4 http.html
``_format`` wins over ``Accept``), instead of sending JSON the client will not parse.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from solent.protocols.fhir.resources import operation_outcome

FHIR_JSON = "application/fhir+json"
DICOM = "application/dicom"
JSON_FORMATS = {"json", "application/json", "application/fhir+json", "application/json+fhir"}
ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    413: "too-costly",
    415: "not-supported",
    422: "invalid",
    429: "throttled",
}


def _mime(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def _acceptable(scope: Scope) -> str | None:
    """None when JSON may be sent; else why not (the format asked for)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    formats = query.get("_format")
    if formats:
        asked = _mime(formats[-1].replace(" ", "+"))  # an unencoded + arrives as a space
        return None if asked in JSON_FORMATS else f"_format={formats[-1]}"
    accept = next((v for k, v in scope.get("headers", []) if k == b"accept"), b"").decode("latin-1")
    if not accept.strip():
        return None
    ranges = [_mime(r) for r in accept.split(",") if r.strip()]
    ok = {"*/*", "application/*", *JSON_FORMATS}
    if scope.get("path", "").startswith("/fhir/Binary/"):
        ok.add(DICOM)  # IHE MHD ITI-68: the manifest itself
    if any(r in ok for r in ranges):
        return None
    return f"Accept: {accept}"


class FhirWire:
    """ASGI middleware for /fhir: 406 for formats other than JSON, OperationOutcome bodies for
    every error answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/fhir" or path.startswith("/fhir/")):
            await self.app(scope, receive, send)
            return
        refused = _acceptable(scope)
        if refused is not None:
            text = f"{refused}: this server answers FHIR JSON ({FHIR_JSON}) only"
            await _send(send, 406, [], operation_outcome("not-supported", text))
            return
        held: dict[str, Any] = {}

        async def rewrite(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                kind = _mime(headers.get(b"content-type", b"").decode("latin-1"))
                if message["status"] >= 400 and kind == "application/json":
                    held["start"], held["body"] = message, b""
                    return
                await send(message)
                return
            if "start" not in held or message["type"] != "http.response.body":
                await send(message)
                return
            held["body"] += message.get("body", b"")
            if message.get("more_body", False):
                return
            start = held.pop("start")
            status = int(start["status"])
            keep = [
                (k, v)
                for k, v in start.get("headers", [])
                if k not in (b"content-type", b"content-length", b"content-encoding")
            ]
            code = ISSUE_CODES.get(status, "exception" if status >= 500 else "processing")
            await _send(send, status, keep, operation_outcome(code, _detail(held["body"])))

        await self.app(scope, receive, rewrite)


def _detail(body: bytes) -> str:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return body.decode("utf-8", "replace")[:500] or "error"
    detail = data.get("detail") if isinstance(data, dict) else data
    if isinstance(detail, list):  # FastAPI's validation errors
        return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return str(detail or "error")


async def _send(send: Send, status: int, headers: list[Any], body: dict[str, Any]) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *headers,
                (b"content-type", FHIR_JSON.encode()),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
