"""STOW-RS (PS3.18 10.5): each application/dicom part goes through the one ingest pipeline.

Parts are spooled to temp files as they arrive, then ingested one by one; one bad part never
rejects the good ones. The response lists what was stored and what failed, with reason codes.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from solent.domain.outcomes import RejectReason, StoreResult
from solent.domain.principal import Channel, Principal, Provenance
from solent.protocols.dicomweb import multipart as mp
from solent.protocols.dicomweb.common import (
    DICOM_JSON,
    DicomWebRoute,
    base_url,
    check_uid,
    principal,
    services_of,
)
from solent.services.registry import Services

router = APIRouter(route_class=DicomWebRoute)

# PS3.18 Table 10.5.3-3 / PS3.4 C-STORE failure statuses.
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
DUPLICATE_INSTANCE = 0x0111
NOT_AUTHORIZED = 0x0124
RETRY_AFTER_S = 5  # what a 503 for an unavailable store tells the client to wait
#: Warning (PS3.18 Table 10.5.3-3): stored, but an IOCM retention note (113039) withdrew nothing
#: yet (legal hold, or awaiting a second person's approval); the Error Comment says which.
STORED_WITH_WARNING = 0xB000

REASON_CODES: dict[RejectReason, int] = {
    RejectReason.MALFORMED: CANNOT_UNDERSTAND,
    RejectReason.MISSING_ATTRIBUTE: CANNOT_UNDERSTAND,
    RejectReason.INVALID_UID: CANNOT_UNDERSTAND,
    RejectReason.NOT_AN_INSTANCE: CANNOT_UNDERSTAND,
    RejectReason.CONFLICT: DUPLICATE_INSTANCE,
    RejectReason.PATIENT_MISMATCH: PROCESSING_FAILURE,
    RejectReason.UNKNOWN_TRUST: NOT_AUTHORIZED,
    RejectReason.NOT_PERMITTED: NOT_AUTHORIZED,
    RejectReason.STORAGE_FAILURE: OUT_OF_RESOURCES,
    RejectReason.TOO_LARGE: OUT_OF_RESOURCES,
}


@dataclass(frozen=True, slots=True)
class PartOutcome:
    result: StoreResult
    failure: int | None  # FailureReason, None when stored
    message: str


def _boundary(content_type: str) -> str:
    media, _, rest = content_type.partition(";")
    if media.strip().lower() != "multipart/related":
        raise HTTPException(
            415,
            'STOW-RS takes multipart/related; type="application/dicom" '
            f"(got {media.strip() or 'no Content-Type'})",
        )
    params: dict[str, str] = {}
    for p in rest.split(";"):
        name, _, value = p.partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    kind = params.get("type", "application/dicom").lower()
    if kind != "application/dicom":
        raise HTTPException(
            415,
            f"STOW-RS parts of type {kind} are not supported; send application/dicom parts",
        )
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise HTTPException(400, "the Content-Type has no usable boundary parameter")
    return boundary


def _store_trust(request: Request, who: Principal) -> Principal:
    """The principal to ingest as: its own trust, or the transitional default for anonymous."""
    if who.trust:
        return who
    default = services_of(request).settings.stow_default_trust
    if not default:
        return who
    return Principal(who.kind, who.name, default, who.roles, who.address)


STOW_WORKERS = 4  # parts ingested at once: fsyncs overlap and the index commits in groups


def _ingest_parts(
    request: Request, who: Principal, parts: list[mp.SpooledPart], study: str | None
) -> list[PartOutcome]:
    """Each part through the one ingest pipeline, a few at a time (like parallel C-STORE
    associations); the outcomes keep the parts' order."""
    a = services_of(request)
    provenance = Provenance(Channel.STOW, remote_address=who.address, user=who.name)

    def one(part: mp.SpooledPart) -> PartOutcome:
        try:
            return _ingest_part(a, who, provenance, part, study)
        finally:
            part.path.unlink(missing_ok=True)

    if len(parts) == 1:
        return [one(parts[0])]
    with ThreadPoolExecutor(min(STOW_WORKERS, len(parts)), "stow") as pool:
        return list(pool.map(one, parts))


def _ingest_part(
    a: Services, who: Principal, provenance: Provenance, part: mp.SpooledPart, study: str | None
) -> PartOutcome:
    kind = part.content_type.split(";")[0].strip().lower()
    if kind not in ("", "application/dicom"):
        result = StoreResult.rejected(RejectReason.MALFORMED, f"part of type {kind}")
        return PartOutcome(
            result, CANNOT_UNDERSTAND, f"parts must be application/dicom, not {kind}"
        )
    if study is not None:
        mismatch = _study_mismatch(part, study)
        if mismatch is not None:
            return mismatch
    result = a.ingest.ingest_file(part.path, who, provenance, move=True)
    if result.ok:
        return PartOutcome(result, None, result.warning or result.message)
    code = REASON_CODES.get(result.reason or RejectReason.MALFORMED, PROCESSING_FAILURE)
    return PartOutcome(result, code, result.message)


def _study_mismatch(part: mp.SpooledPart, study: str) -> PartOutcome | None:
    """A part whose Study Instance UID is not the one in the URL fails (PS3.18 10.5.1)."""
    import pydicom

    try:
        ds = pydicom.dcmread(
            part.path,
            stop_before_pixels=True,
            force=True,
            specific_tags=["StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"],
        )
        found = str(ds.get("StudyInstanceUID", "")).strip()
    except Exception:
        return None  # unreadable: ingest says why
    if found == study or not found:
        return None  # no Study Instance UID at all: ingest refuses it with the reason
    result = StoreResult.rejected(
        RejectReason.MALFORMED,
        "",
        sop_class_uid=str(ds.get("SOPClassUID", "")) or None,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")) or None,
    )
    return PartOutcome(
        result,
        DATASET_MISMATCH,
        f"the instance belongs to study {found[:64]}, not to study {study} named in the URL",
    )


def _element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def response_document(outcomes: list[PartOutcome], base: str, study: str | None) -> dict[str, Any]:
    stored, failed = [], []
    for o in outcomes:
        r = o.result
        item: dict[str, Any] = {}
        if r.sop_class_uid:
            item["00081150"] = _element("UI", r.sop_class_uid)
        if r.sop_instance_uid:
            item["00081155"] = _element("UI", r.sop_instance_uid)
        if o.failure is None:
            item["00081190"] = _element(
                "UR",
                f"{base}/studies/{r.study_uid}/series/{r.series_uid}/instances/{r.sop_instance_uid}",
            )
            if r.warning:
                item["00081196"] = _element("US", STORED_WITH_WARNING)  # Warning Reason
                item["00000902"] = _element("LO", r.warning[:1024])
            stored.append(item)
        else:
            item["00081197"] = _element("US", o.failure)
            if o.message:
                item["00000902"] = _element("LO", o.message[:1024])  # Error Comment, readable
            failed.append(item)
    doc: dict[str, Any] = {}
    study_uid = study or next((o.result.study_uid for o in outcomes if o.result.study_uid), None)
    if study_uid and stored:
        doc["00081190"] = _element("UR", f"{base}/studies/{study_uid}")
    if failed:
        doc["00081198"] = _element("SQ", *failed)
    if stored:
        doc["00081199"] = _element("SQ", *stored)
    return doc


async def _store(request: Request, study: str | None) -> Response:
    if study is not None:
        check_uid(study, "StudyInstanceUID")
    boundary = _boundary(request.headers.get("content-type", ""))
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        # Not inflated (a gzip bomb costs nothing), and not parsed as if it were plain
        # multipart either: RFC 9110 15.5.16 / RFC 7694 say 415 naming what is accepted.
        raise HTTPException(
            415,
            f"STOW-RS does not accept a Content-Encoding ({encoding[:40]}); send the "
            "multipart body uncompressed",
            headers={"Accept-Encoding": "identity"},
        )
    settings = services_of(request).settings
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.stow_max_bytes:
        raise HTTPException(
            413, f"the request is {length} bytes; STOW-RS accepts at most {settings.stow_max_bytes}"
        )
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    spooler = mp.PartSpooler(boundary, settings.tmp_dir, settings.stow_max_bytes, 100_000)
    try:
        async for chunk in request.stream():
            await run_in_threadpool(spooler.feed, chunk)
        parts = spooler.finish()
    except mp.TooLarge as exc:
        spooler.discard()
        raise HTTPException(
            413, f"{exc}; STOW-RS accepts at most {settings.stow_max_bytes} bytes"
        ) from exc
    except mp.BadMultipart as exc:
        spooler.discard()
        raise HTTPException(400, str(exc)) from exc
    except BaseException:
        spooler.discard()
        raise
    who = _store_trust(request, principal(request))
    try:
        outcomes = await run_in_threadpool(_ingest_parts, request, who, parts, study)
    finally:
        spooler.discard()
    doc = response_document(outcomes, base_url(request), study)
    failures = sum(1 for o in outcomes if o.failure is not None)
    warnings = [o.result.warning for o in outcomes if o.failure is None and o.result.warning]
    status = 200 if failures == 0 else (409 if failures == len(outcomes) else 202)
    headers: dict[str, str] = {}
    if warnings and status == 200:
        status = 202  # PS3.18 10.5.3: stored, with warnings
    if warnings:
        text = warnings[0].replace('"', "'").replace("\\", "/")
        headers["Warning"] = f'299 solent "{text}"'

    if status == 409 and all(o.failure == CANNOT_UNDERSTAND for o in outcomes):
        # Nothing stored because the request itself is bad (an instance without a Study
        # Instance UID, not DICOM...): 400, the reasons in each part's Error Comment.
        status = 400
    elif status == 409 and all(o.result.reason is RejectReason.STORAGE_FAILURE for o in outcomes):
        # Nothing stored only because the blob store or the index is unavailable (S3 down):
        # a transient failure the client should retry, not a conflict (issue 16).
        status, headers = 503, {"Retry-After": str(RETRY_AFTER_S)}
    return Response(json.dumps(doc), status_code=status, media_type=DICOM_JSON, headers=headers)


@router.post("/studies")
async def store_instances(request: Request) -> Response:
    return await _store(request, None)


@router.post("/studies/{study}")
async def store_study_instances(
    request: Request, study: Annotated[str, Path(description="Study Instance UID")]
) -> Response:
    return await _store(request, study)
