"""The one table from domain errors to HTTP statuses, for every HTTP adapter.

The JSON API and DICOMweb answer ``{"detail": ...}``; FHIR wraps the same status and words in
an OperationOutcome. A record outside the caller's relationship is a ``NotVisible`` (a
NotFound): 404 with the same words as for a record that does not exist, plus the break-glass
link when the caller's role may use it (which depends on the role only, never the record).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from solent.dicom.render import RenderError
from solent.dicom.transcode import TranscodeError
from solent.errors import AlreadyExists, IndexUnavailable, InvalidInput, NotFound, StorageError
from solent.services.access import AccessDenied, NotVisible

#: Where a caller whose role allows break-glass may ask for it.
BREAK_GLASS_LINK = {
    "href": "/api/break-glass",
    "method": "POST",
    "reasons": "see GET /api/break-glass/reasons",
}

#: Domain error -> (HTTP status, FHIR issue code). First match wins (subclasses first).
TABLE: tuple[tuple[type[Exception], int, str], ...] = (
    (NotFound, 404, "not-found"),
    (AccessDenied, 403, "forbidden"),
    (AlreadyExists, 409, "duplicate"),
    (TranscodeError, 406, "not-supported"),
    (InvalidInput, 400, "invalid"),
    (RenderError, 400, "invalid"),
    (IndexUnavailable, 503, "transient"),
    (StorageError, 503, "transient"),
)


def http_error(exc: Exception) -> tuple[int, str, str] | None:
    """(status, readable message, FHIR issue code) of a domain error; None if unexpected."""
    for kind, status, code in TABLE:
        if isinstance(exc, kind):
            text = exc.message if isinstance(exc, AccessDenied) else str(exc)
            if status == 503:
                text = f"the archive is temporarily unavailable: {exc}"
            return status, text, code
    return None


def error_body(exc: Exception, text: str) -> dict[str, Any]:
    body: dict[str, Any] = {"detail": text}
    if isinstance(exc, NotVisible) and exc.break_glass:
        body["break_glass"] = BREAK_GLASS_LINK
    return body


def install_error_table(app: FastAPI) -> None:
    """Map every domain error a route raises through the table (JSON API, IID, identity)."""
    for kind, _status, _code in TABLE:

        @app.exception_handler(kind)
        async def _mapped(_request: Request, exc: Exception) -> JSONResponse:
            mapped = http_error(exc)
            assert mapped is not None  # registered for the table's kinds only
            status, text, _ = mapped
            return JSONResponse(error_body(exc, text), status_code=status)
