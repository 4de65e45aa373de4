"""IHE MHD Document Responder for imaging manifests (R27; R25's manifest over FHIR).

- ITI-67 Find Document References: ``GET /fhir/DocumentReference?patient=…`` (or
  ``patient.identifier``, ``subject``), one DocumentReference per study the caller may see;
- ITI-68 Retrieve Document: ``GET /fhir/Binary/{id}``, the study's DICOM KOS manifest
  (``application/dicom``; a FHIR Binary when only ``application/fhir+json`` is accepted).

Each DocumentReference points at both manifests a FHIR-only consumer can use: the KOS, and the
ImagingStudy with its WADO-RS and IID Endpoints. Its masterIdentifier is the KOS's SOP Instance
UID, which changes when the study's instances do. Access and audit are the services'.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from solent.protocols.fhir import resources as fhir
from solent.protocols.fhir.routes import (
    Caller,
    Token,
    _answer,
    _base,
    _key,
    _page,
    _person_of_reference,
    _scoped,
    _searched,
    person_of_token,
)
from solent.protocols.fhir.search import FhirError, Search
from solent.services.manifests import ManifestService

router = APIRouter()
DOCUMENT_PARAMS = ("patient.identifier", "patient", "subject", "status")
DICOM = "application/dicom"
LOINC = "http://loinc.org"
#: XDS-I.b's formatCode of a KOS manifest: the SOP Class UID in the DICOM UID registry.
KOS_FORMAT = {
    "system": "urn:oid:1.2.840.10008.2.6.1",
    "code": "1.2.840.10008.5.1.4.1.1.88.59",
    "display": "Key Object Selection Document",
}


def _manifests(request: Request) -> ManifestService:
    manifests: ManifestService = request.app.state.services.manifests
    return manifests


def document_reference(study: dict[str, Any], base_url: str) -> dict[str, Any]:
    pk = study["study_pk"]
    subject = study["subject"]
    started = fhir.study_started(study)
    related: list[dict[str, Any]] = [{"reference": f"ImagingStudy/{pk}"}]
    if study["accession_number"]:
        related.append({"identifier": fhir.accession_identifier(study)})
    context: dict[str, Any] = {"related": related}
    modalities = [m for m in (study["modalities"] or "").split("\\") if m]
    if modalities:
        context["event"] = [{"coding": [{"system": fhir.DCM, "code": m}]} for m in modalities]
    if started:
        context["period"] = {"start": started}
    data: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": str(pk),
        "masterIdentifier": {
            "system": "urn:ietf:rfc:3986",
            "value": f"urn:oid:{study['manifest_uid']}",
        },
        "identifier": [
            {"system": "urn:dicom:uid", "value": f"urn:oid:{study['study_uid']}"},
        ],
        "status": "current",
        "type": {
            "coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}]
        },
        "subject": fhir.subject_reference(subject),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "custodian": {"identifier": {"system": fhir.ODS_SYSTEM, "value": study["trust_code"]}},
        "content": [
            {
                "attachment": {
                    "contentType": DICOM,
                    "url": f"{base_url}/fhir/Binary/{pk}",
                    "title": "Imaging manifest (DICOM Key Object Selection)",
                },
                "format": KOS_FORMAT,
            },
            {
                "attachment": {
                    "contentType": fhir.FHIR_JSON,
                    "url": f"{base_url}/fhir/ImagingStudy/{pk}",
                    "title": "ImagingStudy with WADO-RS and IID endpoints",
                }
            },
        ],
        "context": context,
    }
    if study["study_description"]:
        data["description"] = study["study_description"]
    return fhir.document_reference(data)


def _only_fhir(accept: str) -> bool:
    """Whether the client takes FHIR JSON but not the DICOM bytes (wire.py refused the rest)."""
    ranges = {r.split(";", 1)[0].strip().lower() for r in accept.split(",") if r.strip()}
    return bool(ranges) and not ranges & {DICOM, "*/*", "application/*"}


@router.get("/DocumentReference")
def find_document_references(
    request: Request,
    caller: Caller,
    patient_identifier: Annotated[str | None, Query(alias="patient.identifier")] = None,
    patient: Token = None,
    subject: Token = None,
    status: Token = None,
) -> JSONResponse:
    """ITI-67. ``status``: every manifest is ``current`` (a withdrawn study has none)."""
    manifests = _manifests(request)
    records = request.app.state.services.records

    def build() -> dict[str, Any]:
        _scoped(request, caller, "DocumentReference", "s")
        search = Search(request, DOCUMENT_PARAMS)
        if sum(len(search.values(p)) for p in ("patient", "subject", "patient.identifier")) > 1:
            # FHIR ANDs them; one silently won (patient.identifier over patient) before.
            raise FhirError(
                400, "not-supported", "give one of patient, patient.identifier or subject, once"
            )
        reference = patient or subject
        if patient_identifier:
            person = person_of_token(records, caller, patient_identifier)
        elif reference:
            person = _person_of_reference(records, caller, reference)
        else:
            raise FhirError(400, "required", "search by patient, patient.identifier or subject")
        wanted = {s.strip() for v in search.values("status") for s in v.split(",") if s.strip()}
        if wanted and "current" not in wanted:
            return _page(request, search, [])
        found = [document_reference(s, _base(request)) for s in manifests.documents(caller, person)]
        return _page(request, search, found)

    return _searched(build, request, DOCUMENT_PARAMS)


@router.get("/DocumentReference/{resource_id}")
def read_document_reference(request: Request, caller: Caller, resource_id: str) -> JSONResponse:
    def build() -> dict[str, Any]:
        _scoped(request, caller, "DocumentReference", "r")
        study = _manifests(request).document(caller, _key(resource_id, "document"))
        return document_reference(study, _base(request))

    return _answer(build)


@router.get("/Binary/{resource_id}", response_model=None)
def retrieve_document(request: Request, caller: Caller, resource_id: str) -> Response:
    """ITI-68: the KOS bytes; as a FHIR Binary resource to a client accepting only FHIR."""
    as_fhir = _only_fhir(request.headers.get("accept", ""))
    holder: dict[str, bytes] = {}

    def build() -> dict[str, Any]:
        _scoped(request, caller, "Binary", "r")
        holder["kos"] = _manifests(request).manifest(
            caller, _key(resource_id, "document"), f"{_base(request)}/dicomweb"
        )
        return {
            "resourceType": "Binary",
            "id": resource_id,
            "contentType": DICOM,
            "data": base64.b64encode(holder["kos"]).decode(),
        }

    reply = _answer(build)
    if reply.status_code != 200 or as_fhir:
        return reply
    return Response(holder["kos"], media_type=DICOM)
