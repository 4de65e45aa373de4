"""FHIR R4 read API, the IHE Invoke Image Display launch, and the identity JSON API."""

from __future__ import annotations

from fastapi import FastAPI


def install(app: FastAPI) -> None:
    """Add /fhir, /IHEInvokeImageDisplay (per trust) and /api/identity to the HTTP app."""
    from solent.protocols.api.identity_routes import router as identity_router
    from solent.protocols.fhir.feed import router as feed_router
    from solent.protocols.fhir.iid import router as iid_router
    from solent.protocols.fhir.mhd import router as mhd_router
    from solent.protocols.fhir.routes import router as fhir_router
    from solent.protocols.fhir.wire import FhirWire

    app.include_router(identity_router, prefix="/api/identity")
    app.include_router(fhir_router, prefix="/fhir")
    app.include_router(mhd_router, prefix="/fhir")  # R27: IHE MHD (ITI-67/68)
    app.include_router(feed_router, prefix="/fhir")  # ITI-104 (PUT /fhir/Patient)
    app.include_router(iid_router)
    # Outside the security middleware, so its 401/403 under /fhir are OperationOutcomes too.
    app.add_middleware(FhirWire)
