"""FHIR R4 read API at /fhir: Patient, ImagingStudy, DiagnosticReport, CapabilityStatement.

Patient-level searches (``patient.identifier``) return everything of the person the caller may
see: every visible record linked to the one named, each study under its own trust's record and
identifiers. Access and audit are the records service's; a resource the caller may not see
answers exactly like one that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from solent.domain import nhs_number as nhs
from solent.domain.principal import Principal
from solent.protocols.fhir import resources as fhir
from solent.protocols.fhir.search import FhirError, Search, modality_matches, started_matches
from solent.protocols.http_errors import http_error
from solent.protocols.params import resource_id as parse_resource_id
from solent.security.http import current_principal
from solent.security.oidc import OidcUnavailable
from solent.services.records import Person, RecordService

router = APIRouter()
Caller = Annotated[Principal, Depends(current_principal)]
FHIR_JSON = "application/fhir+json"
Token = Annotated[str | None, Query(max_length=200)]
#: The search parameters each resource takes (the CapabilityStatement lists the same).
PATIENT_PARAMS = ("identifier", "_id")
STUDY_PARAMS = ("patient.identifier", "patient", "subject", "identifier", "modality", "started")
REPORT_PARAMS = ("patient.identifier", "patient", "subject")


def _reply(data: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, media_type=FHIR_JSON)


def _answer(build: Callable[[], dict[str, Any]]) -> JSONResponse:
    """Each domain error as an OperationOutcome with the status of the one table."""
    try:
        return _reply(build())
    except FhirError as exc:
        status, code, text = exc.status, exc.code, exc.text
    except Exception as exc:  # the one table (NotVisible answers like NotFound)
        mapped = http_error(exc)
        if mapped is None:
            raise
        status, text, code = mapped
    return _reply(fhir.operation_outcome(code, text), status)


def _records(request: Request) -> RecordService:
    records: RecordService = request.app.state.services.records
    return records


def _scoped(request: Request, caller: Principal, resource_type: str, interaction: str) -> None:
    """R23: the access service refuses what a SMART launch's scopes do not name."""
    request.app.state.services.access.require_resource(caller, resource_type, interaction)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _split_token(token: str) -> tuple[str | None, str]:
    if "|" in token:
        system, value = token.split("|", 1)
        return system or None, value
    return None, token


def _key(value: str, what: str) -> int:
    """A resource id: a database key; any other text names nothing (404 like unknown)."""
    pk = parse_resource_id(value)
    if pk is None:
        raise FhirError(404, "not-found", f"no {what} that you may see")
    return pk


def person_of_token(records: RecordService, caller: Principal, token: str) -> Person:
    """The person an identifier token names (NHS number or a trust's local ID)."""
    system, value = _split_token(token)
    if system == nhs.NHS_FHIR_SYSTEM:
        return records.person(caller, nhs_number=value)
    trust = fhir.trust_of_system(system or "", "patient-id")
    if trust is None:
        raise FhirError(
            400,
            "invalid",
            "identifier needs a system: "
            f"{nhs.NHS_FHIR_SYSTEM} or {fhir.local_system('<ODS code>')}",
        )
    return records.person(caller, issuer=trust, local_id=value)


def _person_of_reference(records: RecordService, caller: Principal, ref: str) -> Person:
    """``Patient/12``, ``12`` or the absolute URL a Bundle's fullUrl gave (…/fhir/Patient/12)."""
    value = ref.rsplit("/Patient/", 1)[-1] if "/Patient/" in ref else ref.removeprefix("Patient/")
    return records.person(caller, patient_pk=_key(value, "patient"))


#: The SMART scopes the FHIR API honours (R23; services/smart.py).
SMART_SCOPES = (
    "openid",
    "fhirUser",
    "launch",
    "launch/patient",
    "patient/ImagingStudy.rs",
    "patient/DiagnosticReport.rs",
    "patient/Patient.rs",
    "patient/*.rs",
)


@router.get("/.well-known/smart-configuration")
def smart_configuration(request: Request) -> JSONResponse:
    """SMART App Launch discovery (public, like the issuer's own): where an app launched by an
    EPR signs the user in (the configured OIDC issuer) and what this FHIR API honours."""
    services = request.app.state.services
    oidc = services.authenticator.oidc
    if oidc is None:
        text = "SMART App Launch needs an identity provider: set SOLENT_OIDC_ISSUER"
        return _reply(fhir.operation_outcome("not-found", text), 404)
    try:
        endpoints = oidc.endpoints.endpoints()
    except OidcUnavailable as exc:
        return _reply(fhir.operation_outcome("transient", f"sign-in is unavailable: {exc}"), 503)
    return JSONResponse(
        {
            "issuer": oidc.issuer,
            "jwks_uri": endpoints.jwks_uri,
            "authorization_endpoint": endpoints.authorization_endpoint,
            "token_endpoint": endpoints.token_endpoint,
            "grant_types_supported": ["authorization_code"],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": list(SMART_SCOPES),
            "capabilities": [
                "launch-ehr",
                "client-public",
                "sso-openid-connect",
                "context-ehr-patient",
                "permission-patient",
                "permission-v1",
                "permission-v2",
            ],
        }
    )


@router.get("/metadata")
def metadata(request: Request) -> JSONResponse:
    return _reply(fhir.capability_statement(_base(request)))


def _patient_resource(found: dict[str, Any]) -> dict[str, Any]:
    return fhir.patient(
        found["record"], retired=found["retired"], linked=found["linked"], contact=found["contact"]
    )


@router.get("/Patient/{resource_id}")
def read_patient(request: Request, caller: Caller, resource_id: str) -> JSONResponse:
    def build() -> dict[str, Any]:
        _scoped(request, caller, "Patient", "r")
        pk = _key(resource_id, "patient")
        return _patient_resource(_records(request).patient_record(caller, pk))

    return _answer(build)


@router.get("/Patient")
def search_patient(
    request: Request, caller: Caller, identifier: Token = None, _id: Token = None
) -> JSONResponse:
    records = _records(request)

    def build() -> dict[str, Any]:
        _scoped(request, caller, "Patient", "s")
        search = Search(request, PATIENT_PARAMS)
        pk = _key(_id, "patient") if _id else None
        if pk is not None:
            person = records.person(caller, patient_pk=pk)
        elif identifier:
            person = person_of_token(records, caller, identifier)
        else:
            raise FhirError(400, "required", "search Patient by identifier or _id")
        # _id and identifier name records, not the person: only those are returned.
        found = records.patient_records(caller, person, named_only=True, what="fhir Patient")
        return _page(request, search, [_patient_resource(f) for f in found])

    return _searched(build, request, PATIENT_PARAMS)


def _page(request: Request, search: Search, found: list[dict[str, Any]]) -> dict[str, Any]:
    page, total, links = search.bundle_page(found)
    return fhir.bundle(page, base_url=_base(request), total=total, links=links)


def _searched(
    build: Callable[[], dict[str, Any]], request: Request, allowed: tuple[str, ...]
) -> JSONResponse:
    """A search that names nobody the caller may see is an empty Bundle, like no match."""
    reply = _answer(build)
    if reply.status_code == 404:
        try:
            links = Search(request, allowed).bundle_page([])[2]
        except FhirError:
            links = None
        return _reply(fhir.bundle([], base_url=_base(request), links=links))
    return reply


def _study_resources(request: Request, studies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each study with its subject as the caller's trust knows the person (services decide)."""
    return [
        fhir.imaging_study(s, s["series"], base_url=_base(request), subject=s["subject"])
        for s in studies
    ]


@router.get("/ImagingStudy")
def search_imaging_study(
    request: Request,
    caller: Caller,
    patient_identifier: Annotated[str | None, Query(alias="patient.identifier")] = None,
    patient: Token = None,
    subject: Token = None,
    identifier: Token = None,
) -> JSONResponse:
    records = _records(request)

    def build() -> dict[str, Any]:
        _scoped(request, caller, "ImagingStudy", "s")
        search = Search(request, STUDY_PARAMS, sorts=("started", "-started"))
        reference = patient or subject
        if patient_identifier:
            person = person_of_token(records, caller, patient_identifier)
            studies = records.person_studies(caller, person, "fhir ImagingStudy")
        elif reference:
            person = _person_of_reference(records, caller, reference)
            studies = records.person_studies(caller, person, "fhir ImagingStudy")
        elif identifier:
            studies = _studies_by_identifier(records, caller, identifier)
        else:
            raise FhirError(
                400, "required", "search by patient.identifier, patient, subject or identifier"
            )
        found = [
            r
            for r in _study_resources(request, studies)
            if modality_matches(r, search.values("modality"))
            and started_matches(r, search.values("started"))
        ]
        if search.sort == "started":  # the services' order is newest first (-started)
            found.reverse()
        return _page(request, search, found)

    return _searched(build, request, STUDY_PARAMS)


def _studies_by_identifier(
    records: RecordService, caller: Principal, token: str
) -> list[dict[str, Any]]:
    system, value = _split_token(token)
    if (system is None and value.startswith("urn:oid:")) or system == "urn:dicom:uid":
        return records.studies_by_uid_or_accession(
            caller, study_uids=[value.removeprefix("urn:oid:")], with_series=True
        )
    trust = fhir.trust_of_system(system or "", "accession")
    if trust is None:
        raise FhirError(
            400,
            "invalid",
            "identifier: urn:oid:<Study UID>, or an accession number with its trust's system: "
            "https://solent-pacs.nhs.example/Id/<ODS code>/accession|<accession number>",
        )
    return records.studies_by_uid_or_accession(caller, accession=(value, trust), with_series=True)


@router.get("/ImagingStudy/{resource_id}")
def read_imaging_study(request: Request, caller: Caller, resource_id: str) -> JSONResponse:
    def build() -> dict[str, Any]:
        _scoped(request, caller, "ImagingStudy", "r")
        study = _records(request).study(caller, _key(resource_id, "study"))
        return fhir.imaging_study(
            study, study["series"], base_url=_base(request), subject=study["subject"]
        )

    return _answer(build)


@router.get("/DiagnosticReport")
def search_diagnostic_report(
    request: Request,
    caller: Caller,
    patient_identifier: Annotated[str | None, Query(alias="patient.identifier")] = None,
    patient: Token = None,
    subject: Token = None,
) -> JSONResponse:
    records = _records(request)

    def build() -> dict[str, Any]:
        _scoped(request, caller, "DiagnosticReport", "s")
        search = Search(request, REPORT_PARAMS)
        reference = patient or subject
        if patient_identifier:
            person = person_of_token(records, caller, patient_identifier)
        elif reference:
            person = _person_of_reference(records, caller, reference)
        else:
            raise FhirError(
                400, "required", "search DiagnosticReport by patient.identifier or patient"
            )
        out = [
            fhir.diagnostic_report(
                r["report"], {"pk": r["study"]["study_pk"], "patient_pk": r["study"]["patient_pk"]}
            )
            for r in records.person_reports(caller, person)
        ]
        return _page(request, search, out)

    return _searched(build, request, REPORT_PARAMS)


@router.get("/DiagnosticReport/{resource_id}")
def read_diagnostic_report(request: Request, caller: Caller, resource_id: str) -> JSONResponse:
    def build() -> dict[str, Any]:
        _scoped(request, caller, "DiagnosticReport", "r")
        found = _records(request).report(caller, _key(resource_id, "report"))
        return fhir.diagnostic_report(found["report"], found["study"])

    return _answer(build)
