"""JSON API and WebSocket of MDT meetings (issue 12). Thin: the MdtService decides roles, access
and audit; the LiveHub holds the rooms; this module moves JSON between them and the wire.

The live room is ``/api/mdt/meetings/{id}/live?token=BEARER``: browsers cannot set headers on
a WebSocket, so the bearer token comes in the query string and is checked with the same
Authenticator as the HTTP middleware (which lets WebSocket scopes through to here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from solent.domain.principal import Principal, PrincipalKind
from solent.errors import NotFound
from solent.protocols.params import MAX_ID, PathId
from solent.security.authn import AuthenticationFailed, Authenticator
from solent.security.http import current_principal
from solent.services.access import AccessDenied
from solent.services.audit import AuditAction, AuditOutcome
from solent.services.mdt import NewItem
from solent.services.mdt_live import Member
from solent.services.mdt_outcomes import NewOutcome, Reviewed
from solent.services.registry import Services

log = logging.getLogger(__name__)
router = APIRouter(prefix="/mdt")
Caller = Annotated[Principal, Depends(current_principal)]
UID = r"^[0-9]+(\.[0-9]+)*$"
MeetingId = PathId  # bounded: a larger id answered 500 on PostgreSQL
MAX_MESSAGE = 64 * 1024  # one client message (a view with measurements) in bytes
QUEUE = 256  # messages waiting for one socket before it counts as not keeping up


def _services(request: Request | WebSocket) -> Services:
    services: Services = request.app.state.services
    return services


class Item(BaseModel):
    issuer: str = Field(max_length=16)
    patient_id: str = Field(max_length=64)
    study_uids: list[Annotated[str, Field(max_length=64, pattern=UID)]] = Field(max_length=20)


class NewMeeting(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    date: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
    team: str = Field(min_length=1, max_length=200)
    items: list[Item] = Field(min_length=1, max_length=100)
    time: str | None = Field(None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


class Outcome(BaseModel):
    text: str = Field(max_length=10_000)


class ReviewedStudy(BaseModel):
    study_uid: str = Field(max_length=64, pattern=UID)
    series_uids: list[Annotated[str, Field(max_length=64, pattern=UID)]] = Field(
        default_factory=list, max_length=200
    )


class RadiologyOutcome(BaseModel):
    """R32: the radiology input to the MDT for one item."""

    opinion: str = Field(min_length=1, max_length=10_000)
    plan: str = Field("", max_length=10_000)
    reviewed: list[ReviewedStudy] = Field(min_length=1, max_length=20)
    discrepancy: bool = False
    discrepancy_note: str = Field("", max_length=10_000)


def _dicomweb_base(request: Request) -> str:
    """The viewer fetches DICOMweb from the same origin: warm the caches under that base URL
    (series metadata holds absolute URLs, so its cache key does)."""
    return str(request.base_url).rstrip("/") + "/dicomweb"


@router.post("/meetings", status_code=201)
async def create_meeting(request: Request, caller: Caller, body: NewMeeting) -> dict[str, Any]:
    items = [NewItem(i.issuer, i.patient_id, tuple(i.study_uids)) for i in body.items]

    def create() -> dict[str, Any]:
        return _services(request).mdt.create(
            caller,
            title=body.title,
            date=body.date,
            team=body.team,
            items=items,
            time=body.time,
            base_url=_dicomweb_base(request),
        )

    return await run_in_threadpool(create)


@router.get("/meetings")
async def list_meetings(
    request: Request,
    caller: Caller,
    date: Annotated[str | None, Query(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")] = None,
) -> dict[str, Any]:
    return await run_in_threadpool(_services(request).mdt.meetings, caller, date)


@router.get("/meetings/{meeting_id}")
async def get_meeting(request: Request, caller: Caller, meeting_id: MeetingId) -> dict[str, Any]:
    return await run_in_threadpool(_services(request).mdt.get, caller, meeting_id)


@router.post("/meetings/{meeting_id}/prefetch", status_code=202)
async def prefetch(request: Request, caller: Caller, meeting_id: MeetingId) -> JSONResponse:
    base = _dicomweb_base(request)
    started = await run_in_threadpool(_services(request).mdt.prefetch, caller, meeting_id, base)
    return JSONResponse(
        {"started": started, "detail": "prefetch started" if started else "already running"},
        status_code=202,
    )


@router.put("/meetings/{meeting_id}/items/{item_id}/outcome")
async def set_outcome(
    request: Request,
    caller: Caller,
    meeting_id: MeetingId,
    item_id: PathId,
    body: Outcome,
) -> dict[str, Any]:
    return await run_in_threadpool(
        _services(request).mdt.set_outcome, caller, meeting_id, item_id, body.text
    )


@router.post("/meetings/{meeting_id}/items/{item_id}/outcomes", status_code=201)
async def record_outcome(
    request: Request,
    caller: Caller,
    meeting_id: MeetingId,
    item_id: PathId,
    body: RadiologyOutcome,
) -> dict[str, Any]:
    """R32: record the radiology input against the studies reviewed; a discrepancy notifies
    each reviewed study's primary reporter."""
    outcome = NewOutcome(
        body.opinion,
        body.plan,
        tuple(Reviewed(r.study_uid, tuple(r.series_uids)) for r in body.reviewed),
        body.discrepancy,
        body.discrepancy_note,
    )
    return await run_in_threadpool(
        _services(request).mdt_outcomes.record, caller, meeting_id, item_id, outcome
    )


@router.get("/meetings/{meeting_id}/items/{item_id}/outcomes")
async def item_outcomes(
    request: Request, caller: Caller, meeting_id: MeetingId, item_id: PathId
) -> dict[str, Any]:
    return await run_in_threadpool(
        _services(request).mdt_outcomes.for_item, caller, meeting_id, item_id
    )


# -- the live room ------------------------------------------------------------------------------


@router.websocket("/meetings/{meeting_id}/live")
async def live(websocket: WebSocket, meeting_id: int, token: str = "") -> None:
    services = _services(websocket)
    authenticator: Authenticator = services.authenticator
    address = websocket.client.host if websocket.client else None
    await websocket.accept()
    try:
        caller = await run_in_threadpool(authenticator.bearer, token, address)
        if not 1 <= meeting_id <= MAX_ID:  # as PathId on HTTP: PostgreSQL holds no larger key
            raise NotFound(f"no MDT meeting {meeting_id}")
        seat = await run_in_threadpool(services.mdt.join_live, caller, meeting_id)
    except AuthenticationFailed as exc:
        who = Principal(PrincipalKind.USER, "(unauthenticated)", None, address=address)
        await run_in_threadpool(
            services.audit.record,
            who,
            AuditAction.LOGIN_FAILED,
            AuditOutcome.DENIED,
            detail={"why": str(exc)[:200], "path": websocket.url.path[:200]},
        )
        await _refuse(websocket, 4401, f"authentication required: {exc}")
        return
    except AccessDenied as exc:
        await _refuse(websocket, 4403, exc.message)
        return
    except NotFound as exc:
        await _refuse(websocket, 4404, str(exc))
        return

    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE)

    def send(message: dict[str, Any]) -> bool:
        try:
            queue.put_nowait(message)
            return True
        except asyncio.QueueFull:
            writer.cancel()  # a follower that cannot keep up is dropped, not waited for
            return False

    async def write() -> None:
        while True:
            message = await queue.get()
            await websocket.send_text(json.dumps(message, separators=(",", ":")))

    writer = asyncio.create_task(write())
    member = Member(caller.name, seat.coordinator, seat.visible, send)
    hub = services.live
    if hub.prepare(meeting_id, seat.presenter):
        # First member here: the room may be running on other nodes; start from what it shows.
        try:
            stored = await run_in_threadpool(hub.stored, meeting_id)
        except BaseException:
            writer.cancel()
            hub.discard_if_empty(meeting_id)
            raise
        hub.restore(meeting_id, stored)
    hub.join(meeting_id, member, seat.presenter)
    try:
        reader = asyncio.create_task(_read(websocket, services, caller, meeting_id, member))
        done, _pending = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.debug("live room connection ended: %r", task.exception())
        reader.cancel()
    finally:
        writer.cancel()
        hub.leave(meeting_id, member)
        with contextlib.suppress(Exception):
            await websocket.close()


async def _read(
    websocket: WebSocket, services: Services, caller: Principal, meeting_id: int, member: Member
) -> None:
    hub = services.live
    while True:
        try:
            frame = await websocket.receive()
        except RuntimeError:
            return
        if frame["type"] == "websocket.disconnect":
            return
        text = frame.get("text")
        if text is None:  # a binary frame
            member.send({"type": "error", "detail": "send JSON messages as text frames"})
            continue
        if len(text) > MAX_MESSAGE:
            member.send({"type": "error", "detail": f"messages are limited to {MAX_MESSAGE} bytes"})
            continue
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            member.send({"type": "error", "detail": "send JSON messages"})
            continue
        out = hub.handle(meeting_id, member, message)
        for reply in out.replies:
            member.send(reply)
        if out.shown is not None:  # audited before anyone is shown the study
            await run_in_threadpool(services.mdt.shown, caller, meeting_id, out.shown[1])
        hub.publish(meeting_id, out.events)  # the broker keeps the presenter (one path)


async def _refuse(websocket: WebSocket, code: int, detail: str) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps({"type": "error", "detail": detail}))
        await websocket.close(code)
