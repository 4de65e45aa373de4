"""FHIR R4 read API at /fhir: Patient, ImagingStudy, DiagnosticReport, CapabilityStatement.

Patient-level searches (``patient.identifier``) return everything of the person: every record
linked to the one named, each study under its own trust's record and identifiers.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from solent.app import Archive
from solent.domain import nhs_number as nhs
from solent.domain.principal import Principal
from solent.protocols.fhir import resources as fhir
from solent.security.http import current_principal
from solent.services.access import AccessDenied, Permission
from solent.services.audit import AuditAction, PatientRef
from solent.services.identity import IdentityService
from solent.services.inbox import InboxService

router = APIRouter()
Caller = Annotated[Principal, Depends(current_principal)]
FHIR_JSON = "application/fhir+json"
Token = Annotated[str | None, Query(max_length=200)]


class FhirError(Exception):
    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status, self.code, self.text = status, code, text


def _reply(data: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, media_type=FHIR_JSON)


def _error(exc: FhirError) -> JSONResponse:
    return _reply(fhir.operation_outcome(exc.code, exc.text), exc.status)


def _archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _split_token(token: str) -> tuple[str | None, str]:
    if "|" in token:
        system, value = token.split("|", 1)
        return system or None, value
    return None, token


def person_of_token(archive: Archive, caller: Principal, token: str) -> set[int]:
    """Records of the person an identifier token names (NHS number or a trust's local ID)."""
    identity = IdentityService(archive.index)
    system, value = _split_token(token)
    if system == nhs.NHS_FHIR_SYSTEM:
        if not nhs.is_valid(value):
            raise FhirError(400, "invalid", f"{value!r} is not a valid NHS number")
        return identity.by_nhs_number(value)
    trust = fhir.trust_of_system(system or "", "patient-id")
    if trust is None:
        raise FhirError(
            400,
            "invalid",
            "identifier needs a system: "
            f"{nhs.NHS_FHIR_SYSTEM} or {fhir.local_system('<ODS code>')}",
        )
    found = identity.resolve(trust, value)
    if found is None:
        return set()
    archive.access.check_patient(caller, found.issuer, found.local_id)
    return identity.linked_patient_pks(found.patient_pk)


def token_patient(token: str | None) -> PatientRef | None:
    """The patient an identifier token names, for the audit record (searchable by patient)."""
    if not token:
        return None
    system, value = _split_token(token)
    if system == nhs.NHS_FHIR_SYSTEM:
        return PatientRef(nhs.NHS_ISSUER, value, value)
    trust = fhir.trust_of_system(system or "", "patient-id")
    return PatientRef(trust, value) if trust else None


def _guard(request: Request, caller: Principal, what: str) -> Archive:
    archive = _archive(request)
    archive.access.require(caller, Permission.READ, what)
    return archive


@router.get("/metadata")
def metadata(request: Request) -> JSONResponse:
    return _reply(fhir.capability_statement(_base(request)))


def _patient(archive: Archive, pk: int) -> dict[str, Any] | None:
    found = IdentityService(archive.index).record(pk)
    if found is None:
        return None
    return fhir.patient(
        found["record"], retired=found["retired"], linked=found["linked"], contact=found["contact"]
    )


@router.get("/Patient/{resource_id}")
def read_patient(request: Request, caller: Caller, resource_id: str) -> JSONResponse:
    archive = _guard(request, caller, "reading a patient")
    resource = _patient(archive, int(resource_id)) if resource_id.isdigit() else None
    if resource is None:
        return _error(FhirError(404, "not-found", f"Patient/{resource_id} is not known"))
    ident = resource["identifier"][0]
    archive.access.check_patient(caller, ident["assigner"]["identifier"]["value"], ident["value"])
    archive.audit.record(
        caller,
        AuditAction.QUERY,
        patient=PatientRef(ident["assigner"]["identifier"]["value"], ident["value"]),
        detail={"fhir": f"Patient/{resource_id}"},
    )
    return _reply(resource)


@router.get("/Patient")
def search_patient(
    request: Request, caller: Caller, identifier: Token = None, _id: Token = None
) -> JSONResponse:
    archive = _guard(request, caller, "searching patients")
    identity = IdentityService(archive.index)
    try:
        if _id:
            pks = {int(_id)} if _id.isdigit() else set()
        elif identifier:
            system, value = _split_token(identifier)
            if system == nhs.NHS_FHIR_SYSTEM:
                pks = set(identity.records_by_nhs_number(value))
            else:
                trust = fhir.trust_of_system(system or "", "patient-id")
                if trust is None:
                    raise FhirError(400, "invalid", "unknown identifier system")
                found = identity.resolve(trust, value)
                pks = {found.patient_pk} if found else set()
        else:
            raise FhirError(400, "required", "search Patient by identifier or _id")
    except FhirError as exc:
        return _error(exc)
    out = [r for r in (_patient(archive, pk) for pk in sorted(pks)) if r is not None]
    archive.audit.record(
        caller,
        AuditAction.QUERY,
        patient=token_patient(identifier),
        detail={"fhir": "Patient", "identifier": identifier, "results": len(out)},
    )
    return _reply(fhir.bundle(out, base_url=_base(request)))


def _imaging_study(
    identity: IdentityService, request: Request, caller: Principal, study: dict[str, Any]
) -> dict[str, Any]:
    """The study, its subject the record the caller's trust knows the person by."""
    return fhir.imaging_study(
        study,
        identity.series(int(study["study_pk"])),
        base_url=_base(request),
        subject=identity.subject_seen_by(caller, study),
    )


def _studies(
    archive: Archive, request: Request, caller: Principal, pks: set[int]
) -> list[dict[str, Any]]:
    identity = IdentityService(archive.index)
    return [_imaging_study(identity, request, caller, s) for s in identity.studies(pks)]


@router.get("/ImagingStudy")
def search_imaging_study(
    request: Request,
    caller: Caller,
    patient_identifier: Annotated[str | None, Query(alias="patient.identifier")] = None,
    patient: Token = None,
    identifier: Token = None,
) -> JSONResponse:
    archive = _guard(request, caller, "searching imaging studies")
    identity = IdentityService(archive.index)
    try:
        if patient_identifier:
            pks = person_of_token(archive, caller, patient_identifier)
            out = _studies(archive, request, caller, pks)
        elif patient:
            ref = patient.removeprefix("Patient/")
            if not ref.isdigit() or identity.record(int(ref)) is None:
                raise FhirError(404, "not-found", f"Patient/{ref} is not known")
            pks = identity.linked_patient_pks(int(ref))
            out = _studies(archive, request, caller, pks)
        elif identifier:
            out = _studies_by_identifier(archive, request, caller, identifier)
        else:
            raise FhirError(400, "required", "search by patient.identifier, patient or identifier")
    except FhirError as exc:
        return _error(exc)
    archive.audit.record(
        caller,
        AuditAction.QUERY,
        patient=token_patient(patient_identifier),
        detail={
            "fhir": "ImagingStudy",
            "patient.identifier": patient_identifier,
            "results": len(out),
        },
    )
    return _reply(fhir.bundle(out, base_url=_base(request)))


def _studies_by_identifier(
    archive: Archive, request: Request, caller: Principal, token: str
) -> list[dict[str, Any]]:
    identity = IdentityService(archive.index)
    system, value = _split_token(token)
    if system in (None, "urn:dicom:uid") and value.startswith("urn:oid:"):
        study = identity.study(value.removeprefix("urn:oid:"))
        rows = [study] if study else []
    else:
        trust = fhir.trust_of_system(system or "", "accession")
        if trust is None:
            raise FhirError(400, "invalid", "identifier: urn:oid:<Study UID> or an accession")
        rows = identity.studies_by_accession(value, trust)
    out = []
    for row in rows:
        try:
            archive.access.check_study(caller, row["study_uid"], AuditAction.QUERY)
        except AccessDenied:
            continue
        for s in identity.studies({int(row["patient_pk"])}):
            if s["study_uid"] == row["study_uid"]:
                out.append(_imaging_study(identity, request, caller, s))
    return out


@router.get("/ImagingStudy/{resource_id}")
def read_imaging_study(request: Request, caller: Caller, resource_id: str) -> JSONResponse:
    archive = _guard(request, caller, "reading an imaging study")
    identity = IdentityService(archive.index)
    record = identity.study_summary(int(resource_id)) if resource_id.isdigit() else None
    if record is None:
        return _error(FhirError(404, "not-found", f"ImagingStudy/{resource_id} is not known"))
    archive.access.check_study(caller, record["study_uid"])
    resource = _imaging_study(identity, request, caller, record)
    return _reply(resource)


def _reports_of_studies(archive: Archive, studies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    inbox = InboxService(archive.index, IdentityService(archive.index))
    out = []
    for s in studies:
        if not s["accession_number"]:
            continue
        issuer = s["accession_issuer"] or s["trust_code"]
        for r in inbox.reports(s["accession_number"], issuer):
            if not r["superseded"]:
                study = {"pk": s["study_pk"], "patient_pk": s["patient_pk"]}
                out.append(fhir.diagnostic_report(r, study))
    return out


@router.get("/DiagnosticReport")
def search_diagnostic_report(
    request: Request,
    caller: Caller,
    patient_identifier: Annotated[str | None, Query(alias="patient.identifier")] = None,
) -> JSONResponse:
    archive = _guard(request, caller, "searching reports")
    try:
        if not patient_identifier:
            raise FhirError(400, "required", "search DiagnosticReport by patient.identifier")
        pks = person_of_token(archive, caller, patient_identifier)
    except FhirError as exc:
        return _error(exc)
    out = _reports_of_studies(archive, IdentityService(archive.index).studies(pks))
    archive.audit.record(caller, AuditAction.QUERY, detail={"fhir": "DiagnosticReport"})
    return _reply(fhir.bundle(out, base_url=_base(request)))


@router.get("/DiagnosticReport/{resource_id}")
def read_diagnostic_report(request: Request, caller: Caller, resource_id: str) -> JSONResponse:
    archive = _guard(request, caller, "reading a report")
    identity = IdentityService(archive.index)
    inbox = InboxService(archive.index, identity)
    report = inbox.report(int(resource_id)) if resource_id.isdigit() else None
    if report is None:
        return _error(FhirError(404, "not-found", f"DiagnosticReport/{resource_id} is not known"))
    studies = identity.studies_by_accession(report["accession_number"], report["accession_issuer"])
    study = studies[0] if studies else None
    if study is not None:
        archive.access.check_study(caller, study["study_uid"])
    return _reply(fhir.diagnostic_report(report, study))
