"""What every DICOMweb route shares: the principal, the services, error mapping, UIDs, caching.

Domain errors become HTTP statuses here, in one table, with the message as a readable body.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from solent.domain.principal import Principal, PrincipalKind
from solent.domain.uids import uid_problem
from solent.protocols.dicomweb.accept import NotAcceptable
from solent.protocols.http_errors import http_error
from solent.services.registry import Services
from solent.services.retrieve import RetrieveService

PREFIX = "/dicomweb"
DICOM_JSON = "application/dicom+json"


def services_of(request: Request) -> Services:
    """The services this adapter reaches patient data through (never the index or store)."""
    a: Services = request.app.state.services
    return a


def principal(request: Request) -> Principal:
    """The acting principal: the authenticated one when security has set it, else anonymous.

    The one place DICOMweb learns who is calling; authentication replaces it here.
    """
    found = getattr(request.state, "principal", None)
    if isinstance(found, Principal):
        return found
    host = request.client.host if request.client else None
    return Principal(PrincipalKind.USER, "anonymous", None, address=host)


def retrieve_service(request: Request) -> RetrieveService:
    service: RetrieveService = request.app.state.services.retrieve
    return service


def base_url(request: Request) -> str:
    """Absolute URL of the DICOMweb root, as the caller reached it."""
    return str(request.base_url).rstrip("/") + PREFIX


def check_uid(value: str, what: str) -> str:
    problem = uid_problem(value)
    if problem:
        raise HTTPException(400, f"{what} {value[:80]!r} is not a valid UID: {problem}")
    return value


def error_status(exc: Exception) -> tuple[int, str] | None:
    """HTTP status and readable message of a domain error (the one table, plus DICOMweb's
    own content negotiation error); None for unexpected errors."""
    if isinstance(exc, NotAcceptable):
        return 406, str(exc)
    mapped = http_error(exc)
    return None if mapped is None else (mapped[0], mapped[1])


def as_http_error(exc: Exception) -> HTTPException | None:
    """The HTTPException a DICOMweb handler's domain error becomes; None for an HTTPException
    (raised as it is) and for unexpected errors (left to the server's 500)."""
    if isinstance(exc, HTTPException):
        return None
    mapped = error_status(exc)
    return None if mapped is None else HTTPException(mapped[0], mapped[1])


class DicomWebRoute(APIRoute):
    """Maps domain errors raised by a handler to their HTTP status with a readable body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                mapped = as_http_error(exc)
                if mapped is None:
                    raise
                raise mapped from exc

        return route


def immutable_headers(etag: str, settings_replace: bool) -> dict[str, str]:
    """Caching of one instance's content: immutable unless instances may be replaced."""
    control = "private, no-cache" if settings_replace else "private, max-age=31536000, immutable"
    return {"ETag": etag, "Cache-Control": control}


def changing_headers(etag: str) -> dict[str, str]:
    """Caching of study/series resources: instances may be added, so revalidate each time."""
    return {"ETag": etag, "Cache-Control": "private, no-cache"}


def not_modified(request: Request, etag: str) -> bool:
    match = request.headers.get("if-none-match")
    if not match:
        return False
    return match.strip() == "*" or etag in [m.strip() for m in match.split(",")]
