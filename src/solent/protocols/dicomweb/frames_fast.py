"""The WADO-RS `/frames` GET dispatched without FastAPI's routing (issue 14).

A viewer asks hundreds of single frames a second; FastAPI's route matching over every route,
its dependency resolution and AnyIO's thread hand-off cost more CPU than the frame itself in
one GIL-bound process. This wraps the application's router (inside the exception middleware,
outside nothing else): a GET whose path is a frames resource is answered in the event loop by
``wado_rs.frames_at_once`` when that waits for nothing and writes nothing (a repeat frame of a
study in the page cache), else by the route's own handler ``wado_rs.retrieve_frames`` on a
plain thread pool; domain errors are mapped as the route maps them. Everything else goes to
the router untouched. Authentication, the rate limit, error handlers, CORS and compression are
the application's own, as for any route.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette._utils import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from solent.protocols.dicomweb import wado_rs
from solent.protocols.dicomweb.common import PREFIX, as_http_error

FRAMES_PATH = re.compile(
    "^" + re.escape(PREFIX) + r"/studies/([^/]+)/series/([^/]+)/instances/([^/]+)/frames/([^/]+)$"
)
Handler = Callable[[Request, str, str, str, str], Response | None]
# Threads for what may wait: access checks, audit writes, disk reads, decoding.
WORKERS = 16


def check_route(app: FastAPI) -> None:
    """Refuse to start when the route's path and the fast path's pattern disagree."""
    path = app.url_path_for(
        wado_rs.retrieve_frames.__name__, study="1", series="2", sop="3", frame_list="4"
    )
    if FRAMES_PATH.match(path) is None:
        raise RuntimeError(f"the frames route moved to {path}; update FRAMES_PATH")


class FramesFastPath:
    """ASGI wrapper of the router: frames GETs straight to their handler, the rest on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="frames")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            found = FRAMES_PATH.match(get_route_path(scope))
            if found is not None:
                await self._frames(scope, receive, send, found.groups())
                return
        await self.app(scope, receive, send)

    async def _frames(
        self, scope: Scope, receive: Receive, send: Send, uids: tuple[str | Any, ...]
    ) -> None:
        study, series, sop, frame_list = uids
        # What the router records of the match, for anything that reads the scope later.
        scope["endpoint"] = wado_rs.retrieve_frames
        scope["path_params"] = {
            "study": study,
            "series": series,
            "sop": sop,
            "frame_list": frame_list,
        }
        request = Request(scope, receive, send)
        response = _answer(wado_rs.frames_at_once, request, study, series, sop, frame_list)
        if response is None:
            loop = asyncio.get_running_loop()
            response = await loop.run_in_executor(
                self.pool, _answer, wado_rs.retrieve_frames, request, study, series, sop, frame_list
            )
        assert response is not None  # retrieve_frames always answers
        await response(scope, receive, send)


def _answer(handler: Handler, request: Request, *uids: str) -> Response | None:
    """``handler``'s answer, its domain errors raised as the route raises them."""
    try:
        return handler(request, *uids)
    except Exception as exc:
        mapped = as_http_error(exc)
        if mapped is None:
            raise
        raise mapped from exc


def install(app: FastAPI) -> None:
    """Put the fast path in front of ``app``'s router (after the DICOMweb routes are in)."""
    check_route(app)
    router = app.router
    router.middleware_stack = FramesFastPath(router.middleware_stack)
