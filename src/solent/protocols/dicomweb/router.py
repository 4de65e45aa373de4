"""Assembles the DICOMweb routes under /dicomweb, the /frames fast path and the CORS policy."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from starlette._utils import get_route_path
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from solent.protocols.dicomweb import capabilities, frames_fast, stow_rs, wado_rs, wado_uri
from solent.protocols.dicomweb.common import PREFIX
from solent.services.registry import Services

EXPOSED_HEADERS = ["ETag", "Content-Location", "Warning", "Content-Length"]


def build_router() -> APIRouter:
    router = APIRouter()
    try:
        from solent.protocols.dicomweb import qido_rs
    except ImportError:  # the shared query engine is not there yet
        pass
    else:
        router.include_router(qido_rs.router)
    router.include_router(stow_rs.router)
    router.include_router(wado_rs.router)
    return router


class HeadAsGet:
    """HEAD on a DICOMweb resource answers as its GET would, without the body (RFC 9110
    9.3.2: a server MUST support HEAD wherever it supports GET; FastAPI routes answered 405).

    The GET runs with the same access check and caching headers (ETag, Content-Length when
    known); its body is dropped at the first chunk and the response ends there, so the server
    sees the client gone and a streamed study is not read from storage to the end."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "HEAD"
            or not get_route_path(scope).startswith(PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        ended = False

        async def head_send(message: Message) -> None:
            nonlocal ended
            if message["type"] != "http.response.body":
                await send(message)
            elif not ended:  # the server writes no body for HEAD; end the response here
                ended = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app({**scope, "method": "GET"}, receive, head_send)


def install(app: FastAPI, services: Services) -> None:
    """Include the DICOMweb routes (and WADO-URI at /dicomweb/wado) in ``app``."""
    app.include_router(build_router(), prefix=PREFIX, tags=["DICOMweb"])
    app.include_router(wado_uri.router, prefix=PREFIX, tags=["DICOMweb"])
    app.include_router(capabilities.router, prefix=PREFIX, tags=["DICOMweb"])
    # HEAD as GET inside the frames fast path (a HEAD of frames takes the routed GET).
    app.router.middleware_stack = HeadAsGet(app.router.middleware_stack)
    frames_fast.install(app)  # /frames GETs skip FastAPI's routing (issue 14)
    origins = [o.strip() for o in services.settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )
