"""The HTTP application: health, metrics, and the routers each protocol adapter contributes."""

from __future__ import annotations

from typing import Protocol

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from solent import __version__
from solent.protocols.api.mdt_routes import router as mdt_router
from solent.protocols.api.retention_routes import router as retention_router
from solent.protocols.api.routes import router as api_router
from solent.protocols.api.security_routes import router as security_router
from solent.protocols.api.viewer_routes import router as viewer_router
from solent.protocols.compression import ApiGZipMiddleware
from solent.protocols.dicomweb import install as install_dicomweb
from solent.protocols.fhir import install as install_regional_identity
from solent.protocols.http_errors import install_error_table
from solent.protocols.nul_guard import NulGuard
from solent.protocols.params import install_param_errors
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
    app.add_middleware(NulGuard)  # innermost: a NUL in a request is a 400, after authentication
    install_security(app, services)  # every route but /health needs a principal (issue 6)
    install_error_table(app)  # one table from domain errors to HTTP statuses (issue 11)
    install_param_errors(app)  # absurd integers and invalid parameters: 400 (issue 11)

    @app.get("/health", include_in_schema=False)
    def health() -> JSONResponse:
        """Liveness: the process answers and its database does."""
        if not services.health.live():
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok", "version": __version__})

    @app.get("/health/ready", include_in_schema=False)
    def ready() -> JSONResponse:
        """Readiness (issue 16): what a load balancer checks before sending work here."""
        state = services.health.ready()
        body = {"status": "ready" if state.ready else "unavailable", "checks": state.checks}
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(api_router, prefix="/api")
    app.include_router(security_router, prefix="/api")
    app.include_router(viewer_router, prefix="/api")  # issue 12: the viewer's JSON API
    app.include_router(mdt_router, prefix="/api")  # issue 12: MDT meetings and live rooms
    app.include_router(retention_router, prefix="/api")  # R43/R44: holds, retention deletions
    install_regional_identity(app)  # issue 5: /api/identity, /fhir, IHE IID
    install_dicomweb(app, services)  # DICOMweb at /dicomweb (issue 4)
    app.include_router(viewer_static_router)  # the browser viewer's built files at /viewer
    app.add_middleware(ApiGZipMiddleware)  # issue 12: JSON API compressed on the WAN
    return app
