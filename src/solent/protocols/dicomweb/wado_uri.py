"""WADO-URI (PS3.18 9): the single-URL links older EPRs carry, answered from the same services.

``/dicomweb/wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..&contentType=..``
returns the instance (application/dicom) or a rendered image (image/jpeg, image/png).

What major clients send is accepted where the intent is clear: ``transferSyntax=*`` (OHIF /
cornerstone's WADO-URI loader) means "as stored", ``contentType`` may list several types or
carry parameters, and parameters this server does not know are ignored (they are optional
in PS3.18 9.1 and none of them changes which instance is meant).
"""

from __future__ import annotations

import math

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from solent.dicom import transcode as tc
from solent.dicom.render import RenderOptions, Viewport
from solent.protocols.dicomweb.common import (
    DicomWebRoute,
    changing_headers,
    check_uid,
    immutable_headers,
    not_modified,
    principal,
    retrieve_service,
)
from solent.protocols.dicomweb.wado_bodies import primed

router = APIRouter(route_class=DicomWebRoute)

KNOWN = {
    "requestType",
    "studyUID",
    "seriesUID",
    "objectUID",
    "contentType",
    "charset",
    "anonymize",
    "annotation",
    "rows",
    "columns",
    "region",
    "windowCenter",
    "windowWidth",
    "frameNumber",
    "imageQuality",
    "presentationUID",
    "presentationSeriesUID",
    "transferSyntax",
}
CONTENT_TYPES = {"application/dicom", "image/jpeg", "image/png", "image/gif"}
#: Known but not supported: each would change the answer, so it is refused, not ignored.
UNSUPPORTED = ("anonymize", "annotation", "region", "presentationUID", "presentationSeriesUID")
AS_STORED = {"", "*"}  # transferSyntax values meaning "the stored syntax"


def _int(params: dict[str, str], name: str, lo: int, hi: int) -> int | None:
    if name not in params:
        return None
    try:
        value = int(params[name])
    except ValueError as exc:
        raise HTTPException(400, f"{name} must be an integer") from exc
    if not lo <= value <= hi:
        raise HTTPException(400, f"{name} must be between {lo} and {hi}")
    return value


def _float(params: dict[str, str], name: str) -> float | None:
    if name not in params:
        return None
    try:
        value = float(params[name])
    except ValueError as exc:
        raise HTTPException(400, f"{name} must be a number") from exc
    if not math.isfinite(value):  # nan, inf: no window to draw with
        raise HTTPException(400, f"{name} must be a finite number")
    return value


@router.get("/wado")
async def wado(request: Request) -> Response:
    params = {k: v for k, v in request.query_params.items() if k in KNOWN}
    for name in UNSUPPORTED:
        if params.get(name, "").strip():
            raise HTTPException(400, f"{name} is not supported by this server")
    if params.get("requestType") != "WADO":
        raise HTTPException(400, "requestType must be WADO")
    for name in ("studyUID", "seriesUID", "objectUID"):
        if not params.get(name):
            raise HTTPException(400, f"{name} is required")
        check_uid(params[name], name)
    content = [
        c.split(";")[0].strip().lower() for c in params.get("contentType", "image/jpeg").split(",")
    ]
    chosen = next((c for c in content if c in CONTENT_TYPES or c in ("*/*", "image/*")), None)
    if chosen is None:
        raise HTTPException(406, f"contentType must be one of {', '.join(sorted(CONTENT_TYPES))}")
    if chosen in ("*/*", "image/*"):
        chosen = "image/jpeg"
    svc = retrieve_service(request)
    who = principal(request)
    dicom = chosen == "application/dicom"
    found = await run_in_threadpool(
        lambda: svc.instances(
            who,
            params["studyUID"],
            params["seriesUID"],
            params["objectUID"],
            channel="wado-uri" if dicom else "wado-uri rendered",
            use="retrieve" if dicom else "image",
            with_frames=True,
        )
    )
    inst = found[0]
    replace = request.app.state.services.settings.conflict_policy == "replace"
    if dicom:
        target = params.get("transferSyntax", "").strip()
        if target in AS_STORED:
            target = inst.transfer_syntax_uid
        check_uid(target, "transferSyntax")
        if target != inst.transfer_syntax_uid and not (
            tc.can_decode(inst.transfer_syntax_uid) and tc.can_encode(target)
        ):
            raise HTTPException(406, f"cannot send this instance as {tc.describe(target)}")
        # The header says who the patient is as seen from the caller's trust (trust_view).
        identity = await run_in_threadpool(svc.current_identity, who, who.trust)
        fingerprint = await run_in_threadpool(identity.fingerprint, inst.study_uid)
        etag = svc.etag([inst], f"wado-uri|{target}|{fingerprint}")
        headers = changing_headers(etag)
        if not_modified(request, etag):
            return Response(status_code=304, headers=headers)
        if target == inst.transfer_syntax_uid:
            # Its first bytes are read before the headers are sent: S3 down is a clean 503.
            body = await run_in_threadpool(primed, svc.patched_bytes(who, inst, identity), 2)
            return StreamingResponse(
                body,
                media_type="application/dicom",
                headers=headers,
            )
        data = await run_in_threadpool(svc.transcoded, who, inst, target)
        data = await run_in_threadpool(svc.with_identity, who, inst, identity, data)
        return Response(data, media_type="application/dicom", headers=headers)
    rows, cols = _int(params, "rows", 1, 8192), _int(params, "columns", 1, 8192)
    viewport = None
    if rows or cols:
        viewport = Viewport(cols or rows or 1, rows or cols or 1)
    centre, width = _float(params, "windowCenter"), _float(params, "windowWidth")
    if (centre is None) != (width is None):
        raise HTTPException(400, "windowCenter and windowWidth go together")
    if width is not None and width <= 0:
        raise HTTPException(400, "windowWidth must be greater than 0")
    window = (centre, width) if centre is not None and width is not None else None
    quality = _int(params, "imageQuality", 1, 100) or 90
    frame = _int(params, "frameNumber", 1, 1 << 30) or 1
    opts = RenderOptions(chosen, quality, window, "linear", viewport)
    if not inst.number_of_frames:
        raise HTTPException(400, "this instance holds no image; ask for application/dicom")
    etag = svc.etag([inst], f"wado-uri|{frame}|{opts!r}")
    headers = immutable_headers(etag, replace)
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    data = await run_in_threadpool(svc.rendered, who, inst, frame, opts)
    return Response(data, media_type=chosen, headers=headers)
