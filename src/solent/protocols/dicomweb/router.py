"""Assembles the DICOMweb routes under /dicomweb, the /frames fast path and the CORS policy."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from starlette.middleware.cors import CORSMiddleware

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


def install(app: FastAPI, services: Services) -> None:
    """Include the DICOMweb routes (and WADO-URI at /dicomweb/wado) in ``app``."""
    app.include_router(build_router(), prefix=PREFIX, tags=["DICOMweb"])
    app.include_router(wado_uri.router, prefix=PREFIX, tags=["DICOMweb"])
    app.include_router(capabilities.router, prefix=PREFIX, tags=["DICOMweb"])
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
