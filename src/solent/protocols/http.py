"""The HTTP application: health, metrics, and the routers each protocol adapter contributes."""

from __future__ import annotations

from typing import Protocol

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from solent import __version__
from solent.protocols.api.routes import router as api_router
from solent.protocols.api.security_routes import router as security_router
from solent.protocols.dicomweb import install as install_dicomweb
from solent.protocols.fhir import install as install_regional_identity
from solent.protocols.viewer_static import router as viewer_static_router
from solent.security.http import install_security
from solent.services.registry import Services


class Composed(Protocol):
    """What app.py composes (the archive): adapters take only its services."""

    services: Services


def create_app(composed: Services | Composed) -> FastAPI:
    app = FastAPI(
        title="Solent PACS",
        version=__version__,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
    )
    services = composed if isinstance(composed, Services) else composed.services
    app.state.services = services  # what adapters use: services only (issue 11)
    install_security(app, services)  # every route but /health needs a principal (issue 6)

    @app.get("/health", include_in_schema=False)
    def health() -> JSONResponse:
        try:
            services.directory.trusts()  # the index answers
        except Exception as exc:
            return JSONResponse(
                {"status": "unavailable", "detail": type(exc).__name__}, status_code=503
            )
        return JSONResponse({"status": "ok", "version": __version__})

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(api_router, prefix="/api")
    app.include_router(security_router, prefix="/api")
    install_regional_identity(app)  # issue 5: /api/identity, /fhir, IHE IID
    install_dicomweb(app, services)  # DICOMweb at /dicomweb (issue 4)
    app.include_router(viewer_static_router)  # the browser viewer's built files at /viewer
    return app
