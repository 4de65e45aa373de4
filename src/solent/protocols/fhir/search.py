"""FHIR R4 search mechanics of the read API: which parameters a search used, the filters an
EPR narrows a patient's studies with (``modality``, ``started``), ``_sort``, ``_count`` paging,
and the Bundle links that say all of it back (FHIR R4 3.1.1.5 and 3.1.1.6).

Parameters the server does not know are ignored, as FHIR's default ("lenient") handling asks,
and left out of the ``self`` link so the client can see they were not applied; with
``Prefer: handling=strict`` they are refused (400). Pure functions on built resources: what
the caller may see was decided by the services before anything gets here.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request

from solent.protocols.fhir.resources import uk_local

#: Parameters every search takes besides its own. _format and _pretty shape the answer, not
#: the match, so they are accepted and not echoed as "used".
PAGING = ("_count", "_getpagesoffset", "_sort")
SHAPING = ("_format", "_pretty")
MAX_COUNT = 1000
DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")


class FhirError(Exception):
    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status, self.code, self.text = status, code, text


class Search:
    """The query of one search request, checked against the parameters the resource takes."""

    def __init__(self, request: Request, allowed: Iterable[str], sorts: Iterable[str] = ()) -> None:
        self.path = request.url.path
        self.base = str(request.base_url).rstrip("/")
        items = list(request.query_params.multi_items())
        allowed = set(allowed)
        strict = "handling=strict" in request.headers.get("prefer", "").replace(" ", "").lower()
        unknown = sorted(
            {n for n, _ in items if n not in allowed and n not in PAGING and n not in SHAPING}
        )
        if unknown and strict:
            raise FhirError(
                400,
                "not-supported",
                f"unknown search parameter(s): {', '.join(unknown)}; this server takes "
                f"{', '.join(sorted(allowed | set(PAGING)))}",
            )
        self.ignored = unknown
        self.used = [(n, v) for n, v in items if n in allowed]
        count = _int(request, "_count", 0, None)  # more than MAX_COUNT: pages of MAX_COUNT
        self.count = None if count is None else min(count, MAX_COUNT)
        self.offset = _int(request, "_getpagesoffset", 0, None) or 0
        self.sort: str | None = None
        sort = request.query_params.get("_sort")
        if sort:
            if sort in set(sorts):
                self.sort = sort
            elif strict:
                raise FhirError(
                    400, "not-supported", f"_sort={sort} is not supported here: {sorted(sorts)}"
                )

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.used if n == name]

    def bundle_page(
        self, resources: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], int, list[dict[str, str]]]:
        """(the page of resources, the total matched, the Bundle links)."""
        total = len(resources)
        if self.count is None:
            page = resources[self.offset :]
        else:
            page = resources[self.offset : self.offset + self.count]
        links = [{"relation": "self", "url": self._url(self.offset)}]
        if self.count is not None and self.count > 0:
            if self.offset + self.count < total:
                links.append({"relation": "next", "url": self._url(self.offset + self.count)})
            if self.offset > 0:
                links.append(
                    {"relation": "previous", "url": self._url(max(0, self.offset - self.count))}
                )
        return page, total, links

    def _url(self, offset: int) -> str:
        query = list(self.used)
        if self.sort:
            query.append(("_sort", self.sort))
        if self.count is not None:
            query.append(("_count", str(self.count)))
        if offset:
            query.append(("_getpagesoffset", str(offset)))
        # ":", "/", "|" and "," as FHIR writes them (system|value tokens, absolute references)
        text = urlencode(query, safe=":/|,")
        return f"{self.base}{self.path}" + (f"?{text}" if text else "")


def _int(request: Request, name: str, low: int, high: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    ascii_digits = raw.isascii() and raw.isdigit()  # "²".isdigit(), but int("²") fails
    if not ascii_digits or len(raw) > 9 or int(raw) < low or (high is not None and int(raw) > high):
        limit = f"{low}..{high}" if high is not None else f"{low} or more"
        raise FhirError(400, "invalid", f"{name}={raw!r}: a whole number {limit}")
    return int(raw)


# -- ImagingStudy filters ----------------------------------------------------------------------


def modality_matches(resource: dict[str, Any], values: list[str]) -> bool:
    """``modality=CT,MR`` (or ``system|code``): any of them among the study's or its series'
    modalities; repeated parameters must all match."""
    codes = {m.get("code") for m in resource.get("modality", [])}
    codes |= {s.get("modality", {}).get("code") for s in resource.get("series", [])}
    for value in values:
        wanted = {token.split("|", 1)[-1] for token in value.split(",") if token}
        if not wanted & codes:
            return False
    return True


def started_matches(resource: dict[str, Any], values: list[str]) -> bool:
    """``started=ge2025-01-01&started=lt2026`` (FHIR date search with prefixes): each must
    hold. A study without a start date matches no date condition."""
    if not values:
        return True
    started = resource.get("started")
    if not started:
        return False
    lo, hi = _range(started)
    for value in values:
        prefix, text = (value[:2], value[2:]) if value[:2] in DATE_PREFIXES else ("eq", value)
        p_lo, p_hi = _range(text)
        ok = {
            "eq": p_lo <= lo and hi <= p_hi,
            "ne": not (p_lo <= lo and hi <= p_hi),
            "gt": hi > p_hi,
            "lt": lo < p_lo,
            "ge": hi > p_lo,
            "le": lo < p_hi,
            "sa": lo >= p_hi,
            "eb": hi <= p_lo,
        }[prefix]
        if not ok:
            return False
    return True


def _range(text: str) -> tuple[datetime, datetime]:
    """The instants a FHIR date or dateTime of any precision covers, [low, high)."""
    try:
        if len(text) == 4 and text.isdigit():
            return _day_range(date(int(text), 1, 1), date(int(text) + 1, 1, 1))
        if len(text) == 7 and text[4] == "-":
            y, m = int(text[:4]), int(text[5:7])
            return _day_range(date(y, m, 1), date(y + m // 12, m % 12 + 1, 1))
        if len(text) == 10:
            day = date.fromisoformat(text)
            return _day_range(day, day + timedelta(days=1))
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise FhirError(400, "invalid", f"{text!r} is not a FHIR date or dateTime") from None
    if moment.tzinfo is None:
        moment = uk_local(moment)
    step = timedelta(seconds=1) if moment.microsecond == 0 else timedelta(microseconds=1)
    return moment, moment + step


def _day_range(first: date, after: date) -> tuple[datetime, datetime]:
    return (
        uk_local(datetime(first.year, first.month, first.day)),
        uk_local(datetime(after.year, after.month, after.day)),
    )
