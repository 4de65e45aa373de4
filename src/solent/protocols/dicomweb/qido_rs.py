"""QIDO-RS (PS3.18 10.6) on the query engine C-FIND shares (domain.matching + QueryService).

The adapter only turns query parameters into keys and rows into DICOM JSON; matching rules,
patient identity scoping (R24) and the result cap live in the services.
"""

from __future__ import annotations

import re
import zlib
from functools import cache
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Path, Request, Response
from pydicom.datadict import dictionary_VR, tag_for_keyword
from starlette.concurrency import run_in_threadpool

from solent.dicom.metadata_json import person_name_json
from solent.domain.attributes import Level
from solent.domain.matching import parse_query
from solent.errors import InvalidInput
from solent.protocols.dicomweb.accept import parse_accept
from solent.protocols.dicomweb.common import (
    DICOM_JSON,
    DicomWebRoute,
    base_url,
    check_uid,
    principal,
    services_of,
)
from solent.protocols.params import parse_int
from solent.services.trust_view import OTHER_IDS

router = APIRouter(route_class=DicomWebRoute)

CONTROL = {"includefield", "fuzzymatching", "limit", "offset"}
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
# Row keys that are not DICOM keywords of their own.
SPECIAL = {
    "NHSNumber",
    "NHSNumberVerified",
    "IssuerOfAccessionNumber",
    "TransferSyntaxUID",
    OTHER_IDS,
}
CAP_WARNING = (
    '299 solent "The number of results exceeded the maximum supported by the server. '
    'Additional results can be requested."'
)

StudyUID = Annotated[str, Path(description="Study Instance UID")]
SeriesUID = Annotated[str, Path(description="Series Instance UID")]


def _check_includefield(values: list[str]) -> None:
    for raw in values:
        for name in (v.strip() for v in raw.split(",")):
            if not name or name == "all":
                continue
            first = name.split(".")[0]
            if not _TAG.match(first) and tag_for_keyword(first) is None:
                raise HTTPException(400, f"includefield {name!r} is not a DICOM keyword or tag")


def _bool(value: str, name: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise HTTPException(400, f"{name} must be true or false, not {value[:20]!r}")


def _int(value: str, name: str, minimum: int) -> int:
    try:
        return parse_int(value, name, minimum=minimum)
    except InvalidInput as exc:
        raise HTTPException(400, str(exc)) from exc


_AS_INT = frozenset({"IS", "US", "UL", "SL", "SS"})
_AS_FLOAT = frozenset({"DS", "FL", "FD"})


def _encoding(keyword: str) -> tuple[str, str, Any] | None:
    """(tag as DICOM JSON writes it, VR, how to write one value) of a row key; None for keys
    that are no DICOM attribute."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    vr = dictionary_VR(tag)
    if vr == "PN":
        return f"{tag:08X}", vr, lambda v: person_name_json(str(v))
    if vr in _AS_INT:
        return f"{tag:08X}", vr, int
    if vr in _AS_FLOAT:
        return f"{tag:08X}", vr, float
    return f"{tag:08X}", vr, str


@cache
def _plan(keys: tuple[str, ...]) -> tuple[tuple[str, str, str, Any], ...]:
    """(row key, tag, VR, value writer) of the DICOM attributes among a row's keys, worked out
    once per key set (the rows of an answer share theirs): the dictionary look-ups and VR tests
    per row and key were most of the Python a node spent on a 100-row answer (issue 16)."""
    plan = []
    for key in keys:
        if key in SPECIAL:
            continue
        found = _encoding(key)
        if found is not None:
            plan.append((key, *found))
    return tuple(plan)


def row_to_json(row: dict[str, Any], level: Level, base: str) -> dict[str, Any]:
    """One match as DICOM JSON, with its RetrieveURL (keys unsorted: the encoder sorts)."""
    out: dict[str, Any] = {}
    for key, tag, vr, write in _plan(tuple(row)):
        value = row[key]
        if value is None or value == "" or value == []:
            out[tag] = {"vr": vr}
        elif isinstance(value, list):
            out[tag] = {"vr": vr, "Value": [write(v) for v in value]}
        else:
            out[tag] = {"vr": vr, "Value": [write(value)]}
    other = [*(row.get(OTHER_IDS) or ())]  # the study's own record (services/trust_view)
    if row.get("NHSNumber"):
        other.append((row["NHSNumber"], "NHS"))
    if other:
        out["00101002"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00100020": {"vr": "LO", "Value": [pid]},
                    "00100021": {"vr": "LO", "Value": [issuer]},
                    "00100022": {"vr": "CS", "Value": ["TEXT"]},
                }
                for pid, issuer in other
            ],
        }
    if row.get("IssuerOfAccessionNumber"):
        out["00080051"] = {
            "vr": "SQ",
            "Value": [{"00400031": {"vr": "UT", "Value": [row["IssuerOfAccessionNumber"]]}}],
        }
    if level is Level.IMAGE and row.get("TransferSyntaxUID"):
        out["00083002"] = {"vr": "UI", "Value": [row["TransferSyntaxUID"]]}
    study = row.get("StudyInstanceUID")
    url = f"{base}/studies/{study}"
    if level in (Level.SERIES, Level.IMAGE):
        url += f"/series/{row.get('SeriesInstanceUID')}"
    if level is Level.IMAGE:
        url += f"/instances/{row.get('SOPInstanceUID')}"
    out["00081190"] = {"vr": "UR", "Value": [url]}
    out["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
    return out


JSON_TYPES = {DICOM_JSON, "application/json", "application/*", "*/*", "*"}


def _check_accept(request: Request) -> None:
    """QIDO-RS answers in DICOM JSON only: an Accept that excludes it (XML, an image) is
    406 naming what can be sent (PS3.18 8.7), not a JSON body the client did not ask for."""
    for r in parse_accept(request.headers.get("accept")):
        if (r.inner if r.media == "multipart/related" else r.media) in JSON_TYPES:
            return
    raise HTTPException(
        406, "search results are available as application/dicom+json (XML is not supported)"
    )


async def _search(request: Request, level: Level, fixed: dict[str, str]) -> Response:
    for name, uid in fixed.items():
        check_uid(uid, name)
    _check_accept(request)
    keys: dict[str, str | list[str] | None] = {}
    includes: list[str] = []
    fuzzy = False
    limit: int | None = None
    offset = 0
    for name, value in request.query_params.multi_items():
        if name == "includefield":
            includes.append(value)
        elif name == "fuzzymatching":
            fuzzy = _bool(value, name)
        elif name == "limit":
            limit = _int(value, name, 1)
        elif name == "offset":
            offset = _int(value, name, 0)
        elif name in keys:
            prev = keys[name]
            keys[name] = [*(prev if isinstance(prev, list) else [prev or ""]), value]
        else:
            keys[name] = value
    _check_includefield(includes)
    for name, uid in fixed.items():
        if name in keys and keys[name] != uid:
            raise HTTPException(400, f"{name} is fixed by the URL; do not send it again")
        keys[name] = uid
    # Q2 of regional-requirements.md: a patient's studies include those of the records linked
    # to it (same verified NHS number, or HL7 A24), each under its own trust's identifiers.
    linked = level is Level.STUDY and not fixed
    query = parse_query(level, keys, fuzzy_names=fuzzy, linked=linked)
    a = services_of(request)
    cap = int(getattr(a.settings, "max_query_results", 1000))
    who, base = principal(request), base_url(request)

    def run() -> tuple[bool, bytes]:
        result = a.query.find(
            who,
            query,
            limit=limit,
            offset=offset,
            max_results=cap,
            channel="qido-rs",  # audited by the query service (issue 6)
            keys=keys,
        )
        # Encoded in the worker thread too: 100 rows of DICOM JSON must not hold the event loop.
        rows = [row_to_json(r, level, base) for r in result.rows]
        # Attributes in tag order, as PS3.18 F.2 asks, sorted by the encoder (in C).
        return result.capped, orjson.dumps(rows, option=orjson.OPT_SORT_KEYS)

    capped, body = await run_in_threadpool(run)
    headers = {"Cache-Control": "private, no-cache", "Vary": "Accept-Encoding"}
    if capped:
        headers["Warning"] = CAP_WARNING
    if "gzip" in request.headers.get("accept-encoding", "") and len(body) >= 1024:
        z = zlib.compressobj(1, zlib.DEFLATED, 31)
        body = z.compress(body) + z.flush()
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=DICOM_JSON, headers=headers)


@router.get("/studies")
async def search_studies(request: Request) -> Response:
    return await _search(request, Level.STUDY, {})


@router.get("/series")
async def search_series(request: Request) -> Response:
    return await _search(request, Level.SERIES, {})


@router.get("/instances")
async def search_instances(request: Request) -> Response:
    return await _search(request, Level.IMAGE, {})


@router.get("/studies/{study}/series")
async def search_study_series(request: Request, study: StudyUID) -> Response:
    return await _search(request, Level.SERIES, {"StudyInstanceUID": study})


@router.get("/studies/{study}/instances")
async def search_study_instances(request: Request, study: StudyUID) -> Response:
    return await _search(request, Level.IMAGE, {"StudyInstanceUID": study})


@router.get("/studies/{study}/series/{series}/instances")
async def search_series_instances(request: Request, study: StudyUID, series: SeriesUID) -> Response:
    return await _search(
        request, Level.IMAGE, {"StudyInstanceUID": study, "SeriesInstanceUID": series}
    )
