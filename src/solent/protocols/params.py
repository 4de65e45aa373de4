"""Integers from a URL, bounded before they reach a service or the database.

Python's ``int`` has no limit and ``str.isdigit`` accepts characters ``int`` refuses ("²"), while
SQLite and PostgreSQL hold at most 64-bit integers: an unchecked ``?offset=1e30``-sized value
used to surface as a 500. Every adapter reads integer parameters through here, and the app maps
what FastAPI's own validation refuses to a 400 with a readable body, never a 500.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from solent.errors import InvalidInput

MAX_ID = 2**63 - 1  # the largest primary key either database can hold
MAX_PAGE = 2**31 - 1  # limits, offsets: beyond any archive, within every integer column

#: A database id in a URL path (FastAPI answers a value outside the range with a 400).
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]


def parse_int(text: str, name: str, *, minimum: int = 0, maximum: int = MAX_PAGE) -> int:
    """``text`` as an int within [minimum, maximum]; InvalidInput with a readable reason else."""
    digits = text.strip()
    body = digits[1:] if digits[:1] in "+-" else digits
    if not body or len(body) > 19 or not (body.isascii() and body.isdigit()):
        raise InvalidInput(f"{name} must be a whole number, not {text[:24]!r}")
    value = int(digits)
    if not minimum <= value <= maximum:
        raise InvalidInput(f"{name} must be between {minimum} and {maximum}, not {text[:24]}")
    return value


def resource_id(text: str) -> int | None:
    """A database id written in a URL (FHIR ``Patient/{id}``, ``_id=``), or None when the text
    cannot be one: such an id answers like any unknown id."""
    if not text or len(text) > 19 or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if 1 <= value <= MAX_ID else None


def install_param_errors(app: FastAPI) -> None:
    """FastAPI's parameter validation answers 400 (not 422) with what was wrong; an integer too
    large for the database that slipped past a bound is a 400 too, never a 500."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path"))
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=400)

    @app.exception_handler(OverflowError)
    async def _overflow(_request: Request, _exc: OverflowError) -> JSONResponse:
        return JSONResponse({"detail": "a number in the request is out of range"}, status_code=400)
