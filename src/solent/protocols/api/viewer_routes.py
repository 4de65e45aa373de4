"""JSON API of the web viewer (issue 12): worklist search, recent patients, timeline, study,
reports and key images. Thin: each route calls one ViewerService method with the caller.

A patient or study the caller may not see answers 404 exactly like an unknown one (the
service raises the same NotFound for both).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from solent.domain.principal import Principal
from solent.protocols.params import PathId
from solent.security.http import current_principal
from solent.services.registry import Services
from solent.services.viewer import SearchCriteria

router = APIRouter(prefix="/viewer")
Caller = Annotated[Principal, Depends(current_principal)]
UID = r"^[0-9]+(\.[0-9]+)*$"
StudyUID = Annotated[str, Path(max_length=64, pattern=UID)]
Date = Annotated[str | None, Query(pattern=r"^[0-9]{8}$")]


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


class NewKeyImage(BaseModel):
    series_uid: str = Field(max_length=64, pattern=UID)
    sop_uid: str = Field(max_length=64, pattern=UID)
    frame: int = Field(1, ge=1, le=100_000)
    note: str = Field("", max_length=2000)


@router.get("/search")
async def search(
    request: Request,
    caller: Caller,
    q: Annotated[str | None, Query(max_length=64)] = None,
    nhs_number: Annotated[str | None, Query(max_length=16)] = None,
    name: Annotated[str | None, Query(max_length=64)] = None,
    patient_id: Annotated[str | None, Query(max_length=64)] = None,
    trust: Annotated[str | None, Query(max_length=16)] = None,
    accession: Annotated[str | None, Query(max_length=16)] = None,
    date_from: Date = None,
    date_to: Date = None,
    modality: Annotated[str | None, Query(max_length=16, pattern=r"^[A-Za-z0-9]+$")] = None,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 25,
) -> dict[str, Any]:
    criteria = SearchCriteria(
        q, nhs_number, name, patient_id, trust, accession, date_from, date_to, modality
    )
    return await run_in_threadpool(
        _services(request).viewer.search, caller, criteria, offset=offset, limit=limit
    )


@router.get("/recent")
async def recent(request: Request, caller: Caller) -> dict[str, Any]:
    return await run_in_threadpool(_services(request).viewer.recent, caller)


@router.get("/patients/{issuer}/{patient_id}/timeline")
async def timeline(
    request: Request,
    caller: Caller,
    issuer: Annotated[str, Path(max_length=16)],
    patient_id: Annotated[str, Path(max_length=64)],
) -> dict[str, Any]:
    return await run_in_threadpool(_services(request).viewer.timeline, caller, issuer, patient_id)


@router.get("/studies/{study_uid}")
async def study(request: Request, caller: Caller, study_uid: StudyUID) -> dict[str, Any]:
    return await run_in_threadpool(_services(request).viewer.study, caller, study_uid)


@router.get("/studies/{study_uid}/reports")
async def reports(request: Request, caller: Caller, study_uid: StudyUID) -> dict[str, Any]:
    return await run_in_threadpool(_services(request).viewer.reports, caller, study_uid)


@router.get("/studies/{study_uid}/key-images")
async def key_images(request: Request, caller: Caller, study_uid: StudyUID) -> dict[str, Any]:
    return await run_in_threadpool(_services(request).viewer.key_images, caller, study_uid)


@router.get("/studies/{study_uid}/key-objects")
async def key_objects(request: Request, caller: Caller, study_uid: StudyUID) -> dict[str, Any]:
    """Stored key object selections and presentation states, with withdrawn references (R30)."""
    return await run_in_threadpool(_services(request).key_objects.in_study, caller, study_uid)


@router.get("/studies/{study_uid}/mdt-outcomes")
async def mdt_outcomes(request: Request, caller: Caller, study_uid: StudyUID) -> dict[str, Any]:
    """MDT outcomes recorded against the study (R32), for anyone who may see it."""
    return await run_in_threadpool(_services(request).mdt_outcomes.for_study, caller, study_uid)


@router.get("/notices")
async def notices(
    request: Request,
    caller: Caller,
    status: Annotated[str, Query(pattern=r"^(open|acknowledged|all)$")] = "open",
) -> dict[str, Any]:
    """MDT discrepancies with reports the caller was the primary reporter of (R32)."""
    wanted = None if status == "all" else status
    return await run_in_threadpool(
        lambda: _services(request).reporter_notices.notices(caller, status=wanted)
    )


class Acknowledgement(BaseModel):
    response: str = Field("", max_length=10_000)


@router.post("/notices/{notice_id}/acknowledge")
async def acknowledge_notice(
    request: Request,
    caller: Caller,
    notice_id: PathId,
    body: Acknowledgement,
) -> dict[str, Any]:
    return await run_in_threadpool(
        _services(request).reporter_notices.acknowledge, caller, notice_id, body.response
    )


@router.get("/key-images/withdrawn")
async def withdrawn_key_images(request: Request, caller: Caller) -> dict[str, Any]:
    """The caller's key images, and the key objects and presentation states they stored, that
    point at instances an IOCM rejection note withdrew (R30)."""
    return await run_in_threadpool(_services(request).key_objects.withdrawn, caller)


@router.post("/studies/{study_uid}/key-images", status_code=201)
async def add_key_image(
    request: Request, caller: Caller, study_uid: StudyUID, body: NewKeyImage
) -> dict[str, Any]:
    def add() -> dict[str, Any]:
        return _services(request).viewer.add_key_image(
            caller,
            study_uid,
            series_uid=body.series_uid,
            sop_uid=body.sop_uid,
            frame=body.frame,
            note=body.note,
        )

    return await run_in_threadpool(add)


@router.delete("/studies/{study_uid}/key-images/{key_image_id}", status_code=204)
async def delete_key_image(
    request: Request,
    caller: Caller,
    study_uid: StudyUID,
    key_image_id: PathId,
) -> Response:
    await run_in_threadpool(
        _services(request).viewer.delete_key_image, caller, study_uid, key_image_id
    )
    return Response(status_code=204)
