"""WADO-RS: instances, metadata, frames, bulk data, rendered images and thumbnails (PS3.18 10.4).

Instances stream from the blob store in chunks; metadata is the precomputed DICOM JSON joined;
frames are byte ranges. Decoding happens only when the caller asks for another syntax.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Iterator, Sequence
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from solent.dicom import transcode as tc
from solent.dicom.render import RenderOptions, Viewport
from solent.domain.principal import Principal
from solent.domain.records import StoredInstance
from solent.protocols.dicomweb import accept as neg
from solent.protocols.dicomweb import multipart as mp
from solent.protocols.dicomweb import wado_bodies as bodies
from solent.protocols.dicomweb.common import (
    DICOM_JSON,
    DicomWebRoute,
    base_url,
    changing_headers,
    check_uid,
    immutable_headers,
    not_modified,
    principal,
    retrieve_service,
    services_of,
)
from solent.services.retrieve import LocatedSeries, RetrieveService

log = logging.getLogger(__name__)
router = APIRouter(route_class=DicomWebRoute)

StudyUID = Annotated[str, Path(description="Study Instance UID")]
SeriesUID = Annotated[str, Path(description="Series Instance UID")]
SopUID = Annotated[str, Path(description="SOP Instance UID")]
GZIP_MIN = 1024
INLINE_METADATA = 500  # up to this many instances, /metadata is built in one piece
PIXEL_PATHS = {"7FE00010", "7FE00008", "7FE00009"}


def _uids(study: str, series: str | None = None, sop: str | None = None) -> None:
    check_uid(study, "StudyInstanceUID")
    if series is not None:
        check_uid(series, "SeriesInstanceUID")
    if sop is not None:
        check_uid(sop, "SOPInstanceUID")


def _ranges(request: Request) -> list[neg.MediaRange]:
    return neg.parse_accept(request.headers.get("accept"))


def _replace_policy(request: Request) -> bool:
    return services_of(request).settings.conflict_policy == "replace"


# -- instances -------------------------------------------------------------------------


def _retrieve(
    request: Request, study: str, series: str | None = None, sop: str | None = None
) -> Response:
    _uids(study, series, sop)
    who = principal(request)
    svc = retrieve_service(request)
    ranges = _ranges(request)
    instances = svc.instances(who, study, series, sop, channel="wado-rs")
    targets = [neg.negotiate_instance(ranges, i.transfer_syntax_uid) for i in instances]
    identity = svc.current_identity(who, who.trust)
    variant = f"instances|{identity.fingerprint(study)}|" + ",".join(targets)
    etag = svc.etag(instances, variant)
    # The header carries the patient's current identity, which may change: revalidate.
    headers = changing_headers(etag)
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    changed = svc.identity_changed(instances, identity)
    boundary = mp.new_boundary()
    base = base_url(request)
    first: bytes | None = None
    if sop and targets[0] != instances[0].transfer_syntax_uid:
        # One instance: transcode before answering, so a failure is a clean 406.
        first = svc.transcoded(who, instances[0], targets[0])
    length = bodies.content_length(svc, instances, targets, boundary, base, identity, changed)
    if length is not None:
        headers["Content-Length"] = str(length)
    patch = (identity, changed)
    # The first part's head and two pieces after it (however the first instance goes out,
    # they include a read of its blob) are made before the headers are sent.
    parts = bodies.instance_parts(svc, who, instances, targets, boundary, base, first, patch)
    body = bodies.coalesced(bodies.primed(parts, 3))
    single_ts = targets[0] if len(set(targets)) == 1 else None
    return StreamingResponse(
        body,
        media_type=mp.content_type(neg.DICOM, boundary, single_ts),
        headers=headers,
    )


@router.get("/studies/{study}")
def retrieve_study(request: Request, study: StudyUID) -> Response:
    return _retrieve(request, study)


@router.get("/studies/{study}/series/{series}")
def retrieve_series(request: Request, study: StudyUID, series: SeriesUID) -> Response:
    return _retrieve(request, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}")
def retrieve_instance(
    request: Request, study: StudyUID, series: SeriesUID, sop: SopUID
) -> Response:
    return _retrieve(request, study, series, sop)


# -- metadata --------------------------------------------------------------------------


def _metadata(
    request: Request, study: str, series: str | None = None, sop: str | None = None
) -> Response:
    _uids(study, series, sop)
    for r in _ranges(request):
        media = r.inner if r.media == "multipart/related" else r.media
        if media in (DICOM_JSON, "application/json", "*/*", "application/*", "*"):
            break
    else:
        raise HTTPException(
            406, "metadata is available as application/dicom+json (XML is not supported)"
        )
    who = principal(request)
    svc = retrieve_service(request)
    base = base_url(request)
    gzip = "gzip" in request.headers.get("accept-encoding", "")
    docs: list[bytes] | None = None
    instances: list[StoredInstance] = []
    located: LocatedSeries | None = None
    identity = svc.current_identity(who, who.trust)
    if series is None:  # a study may be large: list it, then read the JSON in pages
        instances = svc.instances(who, study, channel="wado-rs metadata", use="view")
        hashes = [i.sha256 for i in instances]
    else:  # the hashes first: a repeat request is answered from the cache
        located = svc.series_hashes(who, study, series, sop, channel="wado-rs metadata")
        hashes = list(located.hashes)
    # The patient attributes are the record's current ones: a change is a new representation.
    variant = f"metadata|{base}|{gzip}|{identity.fingerprint(study)}"
    etag = svc.etag_of(hashes, variant)
    headers = changing_headers(etag)  # the patient attributes may change (issue 5)
    headers["Vary"] = "Accept, Accept-Encoding"
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    cached = svc.responses.get(etag)
    if cached is not None:
        if gzip and cached[:2] == b"\x1f\x8b":
            headers["Content-Encoding"] = "gzip"
        return Response(cached, media_type=DICOM_JSON, headers=headers)
    if located is not None:
        hashes, docs = svc.series_metadata(who, located, base, identity)
        etag = svc.etag_of(hashes, variant)  # what was read (an instance may have arrived)
        headers["ETag"] = etag
    elif len(instances) <= INLINE_METADATA:
        docs = list(svc.metadata_documents(who, instances, base, identity))
    if docs is not None:
        body = b"[" + b",".join(docs) + b"]"
        if gzip and len(body) >= GZIP_MIN:
            body = _gzip(body)
            headers["Content-Encoding"] = "gzip"
        svc.responses.put(etag, body)
        return Response(body, media_type=DICOM_JSON, headers=headers)
    if gzip:
        headers["Content-Encoding"] = "gzip"
    stream = svc.metadata_documents(who, instances, base, identity)
    return StreamingResponse(_json_array(stream, gzip), media_type=DICOM_JSON, headers=headers)


def _gzip(body: bytes) -> bytes:
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    return z.compress(body) + z.flush()


def _json_array(docs: Iterator[bytes], gzip: bool) -> Iterator[bytes]:
    z = zlib.compressobj(1, zlib.DEFLATED, 31) if gzip else None
    out: list[bytes] = [b"["]
    size = 1
    for n, doc in enumerate(docs):
        if n:
            out.append(b",")
        out.append(doc)
        size += len(doc) + 1
        if size >= 1 << 20:
            chunk = b"".join(out)
            yield z.compress(chunk) if z else chunk
            out, size = [], 0
    out.append(b"]")
    chunk = b"".join(out)
    yield (z.compress(chunk) + z.flush()) if z else chunk


@router.get("/studies/{study}/metadata")
def study_metadata(request: Request, study: StudyUID) -> Response:
    return _metadata(request, study)


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(request: Request, study: StudyUID, series: SeriesUID) -> Response:
    return _metadata(request, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
def instance_metadata(
    request: Request, study: StudyUID, series: SeriesUID, sop: SopUID
) -> Response:
    return _metadata(request, study, series, sop)


# -- frames and bulk data -----------------------------------------------------------------

_FRAME_LIST = re.compile(r"^[0-9]{1,9}(,[0-9]{1,9})*$")


def parse_frame_list(text: str) -> list[int]:
    text = text.replace("%2C", ",").replace("%2c", ",")
    if not _FRAME_LIST.match(text):
        raise HTTPException(
            400, f"frame list {text[:60]!r} must be frame numbers separated by commas, e.g. 1,3"
        )
    numbers = [int(n) for n in text.split(",")]
    if any(n < 1 for n in numbers):
        raise HTTPException(400, "frame numbers start at 1")
    if len(numbers) > 10000:
        raise HTTPException(400, "at most 10000 frames per request")
    return numbers


def _part_type(plan: neg.FramePlan) -> str:
    return f"{plan.media_type}; transfer-syntax={plan.transfer_syntax}"


def _direct(inst: StoredInstance, plan: neg.FramePlan) -> bool:
    """True when the stored bytes of each frame are what the plan sends (no decoding)."""
    if inst.frames_json is None:
        return False
    little_endian_native = inst.transfer_syntax_uid in (tc.EXPLICIT_LE, tc.IMPLICIT_LE)
    return plan.as_stored or (plan.transfer_syntax == tc.EXPLICIT_LE and little_endian_native)


def _frame_bytes(
    svc: RetrieveService,
    who: Principal,
    inst: StoredInstance,
    number: int,
    plan: neg.FramePlan,
    doc: dict[str, object] | None,
) -> bytes:
    if _direct(inst, plan):
        data = svc.stored_frame(who, inst, number)
        if data is not None:
            return data
    if doc is None:
        doc = svc.metadata_of(who, inst)
    return svc.frame_as(who, inst, number, plan.transfer_syntax, doc)


def _first_frame(
    svc: RetrieveService,
    who: Principal,
    inst: StoredInstance,
    number: int,
    ranges: list[neg.MediaRange],
    doc: dict[str, object] | None,
) -> tuple[bytes, neg.FramePlan]:
    """The first frame in the first acceptable form its pixels can take, and that form: a
    1-bit segmentation or float parametric map has no compressed encoding, so the viewer's
    "HTJ2K, else uncompressed (q=0.5)" was answered 406 and the image never shown."""
    failure: tc.TranscodeError | None = None
    for plan in neg.pixel_plans(ranges, inst.transfer_syntax_uid):
        try:
            return _frame_bytes(svc, who, inst, number, plan, doc), plan
        except tc.TranscodeError as exc:
            failure = failure or exc
            if doc is None:
                doc = svc.metadata_of(who, inst)
    assert failure is not None  # negotiate_pixels found a plan: one was tried
    raise failure


def _frames_head(
    request: Request, svc: RetrieveService, inst: StoredInstance, plan: neg.FramePlan, variant: str
) -> tuple[dict[str, str], Response | None]:
    """The caching headers of a frames answer, and the 304 when the caller has it already."""
    etag = svc.etag([inst], f"{variant}|{plan.media_type}|{plan.transfer_syntax}")
    headers = immutable_headers(etag, _replace_policy(request))
    headers["Vary"] = "Accept"  # the syntax sent depends on it: a cache must key on it
    if not_modified(request, etag):
        return headers, Response(status_code=304, headers=headers)
    return headers, None


def _frames_response(
    request: Request,
    svc: RetrieveService,
    who: Principal,
    inst: StoredInstance,
    numbers: list[int],
    variant: str,
) -> Response:
    ranges = _ranges(request)
    plan = neg.negotiate_pixels(ranges, inst.transfer_syntax_uid)
    svc.check_frames(inst, numbers)
    headers, unchanged = _frames_head(request, svc, inst, plan, variant)
    if unchanged is not None:
        return unchanged
    doc = None if _direct(inst, plan) else svc.metadata_of(who, inst)
    try:
        first = _frame_bytes(svc, who, inst, numbers[0], plan, doc)
    except tc.TranscodeError:
        first, plan = _first_frame(svc, who, inst, numbers[0], ranges, doc)
        headers, unchanged = _frames_head(request, svc, inst, plan, variant)
        if unchanged is not None:
            return unchanged
    boundary = mp.new_boundary()
    part_type = _part_type(plan)
    media_type = mp.content_type(plan.media_type, boundary)
    if len(numbers) == 1:
        pieces = bodies.single_part(boundary, part_type, first)
        return bodies.PiecesResponse(pieces, media_type=media_type, headers=headers)
    rest = (_frame_bytes(svc, who, inst, n, plan, doc) for n in numbers[1:])
    parts = bodies.frame_parts(boundary, part_type, first, rest)
    return StreamingResponse(parts, media_type=media_type, headers=headers)


FRAMES_CHANNEL = "wado-rs frames"


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}")
def retrieve_frames(
    request: Request, study: StudyUID, series: SeriesUID, sop: SopUID, frame_list: str
) -> Response:
    _uids(study, series, sop)
    numbers = parse_frame_list(frame_list)
    who = principal(request)
    svc = retrieve_service(request)
    # issue 6: one coalesced VIEW record per caller and study, not one per frame
    inst = svc.instances(
        who, study, series, sop, channel=FRAMES_CHANNEL, use="image", with_frames=True
    )[0]
    return _frames_response(request, svc, who, inst, numbers, "frames|" + frame_list)


def frames_at_once(
    request: Request, study: str, series: str, sop: str, frame_list: str
) -> Response | None:
    """`retrieve_frames`' answer when making it waits for nothing and writes nothing, so the
    event loop may run it (a thread hand-off costs a /frames request a third of its CPU): one
    frame, as stored and in the page cache, of an instance the service finds at once (see
    `RetrieveService.instance_at_once`). None: call `retrieve_frames` from a thread. Raises
    what `retrieve_frames` raises, in the same order."""
    _uids(study, series, sop)
    numbers = parse_frame_list(frame_list)
    if len(numbers) != 1:
        return None
    who = principal(request)
    svc = retrieve_service(request)
    inst = svc.instance_at_once(who, study, series, sop, channel=FRAMES_CHANNEL)
    if inst is None:
        return None
    plan = neg.negotiate_pixels(_ranges(request), inst.transfer_syntax_uid)
    svc.check_frames(inst, numbers)
    if not _direct(inst, plan):
        return None
    headers, unchanged = _frames_head(request, svc, inst, plan, "frames|" + frame_list)
    if unchanged is not None:
        return unchanged
    boundary = mp.new_boundary()
    head, tail = bodies.single_part_frame(boundary, _part_type(plan))
    body = svc.cached_frame(who, inst, numbers[0], before=head, after=tail)
    if body is None:
        return None
    media_type = mp.content_type(plan.media_type, boundary)
    return bodies.PiecesResponse((body,), media_type=media_type, headers=headers)


@router.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{path:path}")
def retrieve_bulkdata(
    request: Request, study: StudyUID, series: SeriesUID, sop: SopUID, path: str
) -> Response:
    _uids(study, series, sop)
    who = principal(request)
    svc = retrieve_service(request)
    inst = svc.instances(
        who, study, series, sop, channel="wado-rs bulkdata", use="image", with_frames=True
    )[0]
    key = path.strip("/").upper()
    if key in PIXEL_PATHS:
        total = inst.number_of_frames or 0
        if total == 0:
            raise HTTPException(404, "this instance has no pixel data")
        return _frames_response(request, svc, who, inst, list(range(1, total + 1)), "bulk|" + key)
    etag = svc.etag([inst], "bulk|" + key)
    headers = immutable_headers(etag, _replace_policy(request))
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    data = svc.bulk_element(who, inst, key)
    boundary = mp.new_boundary()
    pieces = bodies.single_part(boundary, neg.OCTETS, data)
    media_type = mp.content_type(neg.OCTETS, boundary)
    return bodies.PiecesResponse(pieces, media_type=media_type, headers=headers)


# -- rendered and thumbnails ------------------------------------------------------------

RENDER_PARAMS = {"window", "viewport", "quality", "annotation", "charset", "iccprofile", "accept"}


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise HTTPException(400, f"{what} must be numbers separated by commas") from exc
    if not all(math.isfinite(v) for v in values):  # nan, inf: no window to draw with
        raise HTTPException(400, f"{what} must be finite numbers")
    return values


def render_options(request: Request, *, thumbnail: bool = False) -> RenderOptions:
    """The rendering a request asks for. Query parameters this server does not know are
    ignored: PS3.18 8.3.3 makes them optional, and none changes which image is meant. The
    ``accept`` parameter (8.3.3.1) overrides the Accept header (browsers cannot set one on an
    <img> link)."""
    params = request.query_params
    accept = params.getlist("accept")
    ranges = neg.parse_accept(",".join(accept)) if accept else _ranges(request)
    media = neg.negotiate_rendered(ranges)
    quality = 80 if thumbnail else 90
    if "quality" in params:
        try:
            quality = int(params["quality"])
        except ValueError as exc:
            raise HTTPException(400, "quality must be an integer from 1 to 100") from exc
        if not 1 <= quality <= 100:
            raise HTTPException(400, "quality must be an integer from 1 to 100")
    window: tuple[float, float] | None = None
    function = "linear"
    if "window" in params:
        parts = params["window"].split(",")
        if len(parts) not in (2, 3):
            raise HTTPException(400, "window must be center,width[,function]")
        centre, width = _floats(",".join(parts[:2]), "window center and width")
        if width <= 0:
            raise HTTPException(400, "window width must be greater than 0")
        window = (centre, width)
        if len(parts) == 3:
            function = parts[2].strip().lower()
            if function not in ("linear", "linear-exact", "sigmoid"):
                raise HTTPException(400, "window function must be linear, linear-exact or sigmoid")
    viewport = Viewport(128, 128) if thumbnail else None
    if "viewport" in params:
        raw = params["viewport"].split(",")
        if len(raw) not in (2, 6):
            raise HTTPException(400, "viewport must be vw,vh or vw,vh,sx,sy,sw,sh")
        try:
            values = [int(v) if v.strip() else 0 for v in raw]
        except ValueError as exc:
            raise HTTPException(400, "viewport values must be integers") from exc
        if not (0 < values[0] <= 8192 and 0 < values[1] <= 8192):
            raise HTTPException(400, "viewport width and height must be between 1 and 8192")
        source = (values[2], values[3], values[4], values[5]) if len(values) == 6 else None
        viewport = Viewport(values[0], values[1], source)
    return RenderOptions(media, quality, window, function, viewport)


async def _rendered(
    request: Request,
    inst: StoredInstance,
    frame: int,
    opts: RenderOptions,
    svc: RetrieveService,
    *,
    changing: bool = False,
) -> Response:
    variant = f"rendered|{frame}|{opts!r}"
    etag = svc.etag([inst], variant)
    # A study or series thumbnail shows whichever image is in the middle now: instances may be
    # added, so it is revalidated (its ETag still gives 304) rather than cached for a year.
    headers = (
        changing_headers(etag) if changing else immutable_headers(etag, _replace_policy(request))
    )
    headers["Vary"] = "Accept"
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    who = principal(request)
    if (inst.number_of_frames or 0) == 0:
        raise HTTPException(400, f"instance {inst.sop_instance_uid} holds no image to render")
    # Rendering is pure in the stored bytes and the options: cache by the ETag.
    data = svc.responses.get(etag)
    if data is None:
        data = await run_in_threadpool(svc.rendered, who, inst, frame, opts)
        svc.responses.put(etag, data)
    return Response(data, media_type=opts.media_type, headers=headers)


async def _instance(
    request: Request, study: str, series: str, sop: str
) -> tuple[RetrieveService, StoredInstance]:
    _uids(study, series, sop)
    svc = retrieve_service(request)
    return svc, (await _images_of(request, svc, study, series, sop))[0]


async def _images_of(
    request: Request, svc: RetrieveService, study: str, series: str | None, sop: str | None
) -> list[StoredInstance]:
    """The instances to render, with the service's coalesced VIEW record (channel "rendered")."""
    who = principal(request)
    return await run_in_threadpool(
        lambda: svc.instances(
            who, study, series, sop, channel="rendered", use="image", with_frames=True
        )
    )


@router.get("/studies/{study}/series/{series}/instances/{sop}/rendered")
async def instance_rendered(
    request: Request, study: StudyUID, series: SeriesUID, sop: SopUID
) -> Response:
    try:
        opts: RenderOptions | None = render_options(request)
        refused: neg.NotAcceptable | None = None
    except neg.NotAcceptable as exc:  # application/pdf: known only once the instance is
        opts, refused = None, exc
    svc, inst = await _instance(request, study, series, sop)
    media = svc.document_media_type(inst)
    if media is not None:
        return await _document(request, inst, media, svc)
    if opts is None:
        raise refused or neg.NotAcceptable("no rendered representation accepted")
    return await _rendered(request, inst, 1, opts, svc)


async def _document(
    request: Request, inst: StoredInstance, media: str, svc: RetrieveService
) -> Response:
    """An Encapsulated PDF / CDA instance rendered: the document itself (PS3.18 8.3.4)."""
    params = request.query_params.getlist("accept")
    ranges = neg.parse_accept(",".join(params)) if params else _ranges(request)
    kind = media.split("/")[0]
    if not any(r.media in (media, f"{kind}/*", *neg.WILDCARDS) for r in ranges):
        raise neg.NotAcceptable(
            f"instance {inst.sop_instance_uid} is an encapsulated document: rendered as {media}"
        )
    etag = svc.etag([inst], "document")
    headers = immutable_headers(etag, _replace_policy(request))
    headers["Vary"] = "Accept"
    headers["X-Content-Type-Options"] = "nosniff"
    if media != "application/pdf":  # CDA opened by a browser: XML that must not run script
        headers["Content-Security-Policy"] = "sandbox"
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    data = await run_in_threadpool(svc.encapsulated_document, principal(request), inst)
    return Response(data, media_type=media, headers=headers)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}/rendered")
async def frame_rendered(
    request: Request, study: StudyUID, series: SeriesUID, sop: SopUID, frame_list: str
) -> Response:
    numbers = parse_frame_list(frame_list)
    if len(numbers) != 1:
        raise HTTPException(400, "a rendered frame request names exactly one frame")
    opts = render_options(request)
    svc, inst = await _instance(request, study, series, sop)
    return await _rendered(request, inst, numbers[0], opts, svc)


def _representative(instances: Sequence[StoredInstance]) -> StoredInstance:
    """The middle image of the first series that has images (what a study thumbnail shows)."""
    images = [i for i in instances if i.number_of_frames]
    if not images:
        raise HTTPException(404, "no image to make a thumbnail of")
    first_series = images[0].series_uid
    series = [i for i in images if i.series_uid == first_series]
    return series[len(series) // 2]


async def _thumbnail(
    request: Request,
    study: str,
    series: str | None = None,
    sop: str | None = None,
    frame: int = 1,
) -> Response:
    _uids(study, series, sop)
    opts = render_options(request, thumbnail=True)
    svc = retrieve_service(request)
    inst = _representative(await _images_of(request, svc, study, series, sop))
    if frame != 1:
        svc.check_frames(inst, [frame])
    return await _rendered(request, inst, frame, opts, svc, changing=sop is None)


@router.get("/studies/{study}/thumbnail")
async def study_thumbnail(request: Request, study: StudyUID) -> Response:
    return await _thumbnail(request, study)


@router.get("/studies/{study}/series/{series}/thumbnail")
async def series_thumbnail(request: Request, study: StudyUID, series: SeriesUID) -> Response:
    return await _thumbnail(request, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}/thumbnail")
async def instance_thumbnail(
    request: Request, study: StudyUID, series: SeriesUID, sop: SopUID
) -> Response:
    return await _thumbnail(request, study, series, sop)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}/thumbnail")
async def frame_thumbnail(
    request: Request, study: StudyUID, series: SeriesUID, sop: SopUID, frame_list: str
) -> Response:
    numbers = parse_frame_list(frame_list)
    if len(numbers) != 1:
        raise HTTPException(400, "a frame thumbnail request names exactly one frame")
    return await _thumbnail(request, study, series, sop, numbers[0])


__all__ = ["router"]
