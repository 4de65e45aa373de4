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
from solent.protocols.fhir.mdt_report import mdt_report, outcome_id
from solent.protocols.fhir.search import FhirError, Search, modality_matches, started_matches
from solent.protocols.http_errors import http_error
from solent.protocols.params import resource_id as parse_resource_id
from solent.security.http import current_principal
from solent.security.oidc import OidcUnavailable
from solent.services.access import NotVisible
from solent.services.mdt_outcomes import MdtOutcomeService
from solent.services.patient_queries import (
    NHS_DOMAIN,
    DemographicQuery,
    DomainId,
    PatientQueryService,
    UnknownDomains,
    UnknownSourceDomain,
)
from solent.services.records import Person, RecordService

router = APIRouter()
Caller = Annotated[Principal, Depends(current_principal)]
FHIR_JSON = "application/fhir+json"
Token = Annotated[str | None, Query(max_length=200)]
#: The search parameters each resource takes (the CapabilityStatement lists the same).
#: Patient takes the PDQm (ITI-78) parameters besides identifier and _id.
PATIENT_PARAMS = (
    "identifier",
    "_id",
    "family",
    "family:exact",
    "given",
    "given:exact",
    "birthdate",
    "gender",
    "active",
)
DEMOGRAPHIC_PARAMS = PATIENT_PARAMS[2:]
GENDERS = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
NHS_OID_URI = "urn:oid:2.16.840.1.113883.2.1.4.1"
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


def _mdt_outcomes(request: Request) -> MdtOutcomeService:
    outcomes: MdtOutcomeService = request.app.state.services.mdt_outcomes
    return outcomes


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


def _patients(request: Request) -> PatientQueryService:
    patients: PatientQueryService = request.app.state.services.patients
    return patients


def _domain_of_system(system: str) -> str | None:
    """An identifier system as a patient identification domain: NHS, or a trust's ODS code."""
    if system in (nhs.NHS_FHIR_SYSTEM, NHS_OID_URI):
        return NHS_DOMAIN
    return fhir.trust_of_system(system, "patient-id")


def _system_of_domain(domain: str) -> str:
    return nhs.NHS_FHIR_SYSTEM if domain == NHS_DOMAIN else fhir.local_system(domain)


@router.get("/Patient/$ihe-pix")
def pixm_query(
    request: Request,
    caller: Caller,
    source_identifier: Annotated[
        str | None, Query(alias="sourceIdentifier", max_length=200)
    ] = None,
    target_system: Annotated[list[str] | None, Query(alias="targetSystem", max_length=200)] = None,
) -> JSONResponse:
    """IHE PIXm (ITI-83): the person's identifiers in other domains, as a Parameters resource
    of targetIdentifier and targetId. Unknown source domain 400, unknown (or not visible)
    source identifier 404, unknown target system 403 (PIXm 2.3.83.4.2.3)."""

    def build() -> dict[str, Any]:
        _scoped(request, caller, "Patient", "r")
        if len(request.query_params.getlist("sourceIdentifier")) > 1:
            raise FhirError(400, "not-supported", "sourceIdentifier may be given once")
        if not source_identifier or "|" not in source_identifier:
            raise FhirError(400, "required", "sourceIdentifier=system|value is required")
        system, value = source_identifier.split("|", 1)
        domain = _domain_of_system(system)
        targets: list[str] = []
        for wanted in target_system or []:
            for one in wanted.split(","):
                target = _domain_of_system(one)
                if target is None:
                    raise FhirError(403, "code-invalid", f"targetSystem not found: {one}")
                targets.append(target)
        try:
            found = _patients(request).cross_reference(
                caller, DomainId(domain or system, value), targets, transaction="ITI-83"
            )
        except UnknownSourceDomain:
            raise FhirError(
                400, "code-invalid", f"sourceIdentifier Assigning Authority not found: {system}"
            ) from None
        except UnknownDomains as exc:  # a trust's system naming no registered trust
            names = ", ".join(_system_of_domain(d) for _, d in exc.domains)
            raise FhirError(403, "code-invalid", f"targetSystem not found: {names}") from None
        except NotVisible:
            raise FhirError(
                404, "not-found", "sourceIdentifier Patient Identifier not found"
            ) from None
        return fhir.pix_parameters(
            [(_system_of_domain(i.domain), i.value, i.patient_pk) for i in found]
        )

    return _answer(build)


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
        if any(search.values(name) for name in DEMOGRAPHIC_PARAMS):
            return _page(request, search, _pdqm(request, caller, search))
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


def _pdqm(request: Request, caller: Principal, search: Search) -> list[dict[str, Any]]:
    """IHE PDQm (ITI-78): Patient resources matching the demographics, one per record (each
    trust's record is its own Patient, linked to the person's other visible records).
    ``family``/``given`` match the start of a name, case-insensitive (``:exact``: the whole
    name); ``birthdate`` a day; ``gender`` the administrative gender."""

    def one(name: str) -> str | None:
        values = search.values(name)
        if len(values) > 1:
            raise FhirError(400, "not-supported", f"{name} may be given once")
        return values[0] if values else None

    family, family_exact = one("family"), one("family:exact")
    given, given_exact = one("given"), one("given:exact")
    if (family_exact or given_exact) and (family or given):
        raise FhirError(400, "not-supported", "use either :exact or plain name parameters")
    birthdate = one("birthdate")
    if birthdate is not None:
        day = birthdate.removeprefix("eq")
        if len(day) != 10 or day[4] != "-" or day[7] != "-" or not day.replace("-", "").isdigit():
            raise FhirError(400, "invalid", "birthdate: a day, YYYY-MM-DD (prefix eq only)")
        birthdate = day.replace("-", "")
    gender = one("gender")
    if gender is not None and gender not in GENDERS:
        raise FhirError(400, "invalid", f"gender: one of {', '.join(GENDERS)}")
    active = one("active")
    if active not in (None, "true", "false"):
        raise FhirError(400, "invalid", "active: true or false")
    ident = None
    if token := one("identifier"):
        system, value = _split_token(token)
        domain = _domain_of_system(system or "")
        if domain is None:
            raise FhirError(
                400, "invalid", f"identifier system {system or '(none)'} is not a known domain"
            )
        ident = DomainId(domain, value)
    query = DemographicQuery(
        family=family or family_exact,
        given=given or given_exact,
        birth_date=birthdate,
        sex=GENDERS[gender] if gender else None,
        identifier=ident,
        exact_names=bool(family_exact or given_exact),
    )
    if query.is_empty():
        raise FhirError(400, "required", "give family, given, birthdate, gender or identifier")
    if active == "false":  # every record held is active: none matches, nothing is read
        return []
    people = _patients(request).find_people(caller, query, transaction="ITI-78")
    wanted_id = one("_id")
    return [
        _patient_resource(found)
        for p in people
        for found in p.matched
        if wanted_id is None or str(found["record"]["pk"]) == wanted_id
    ]


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
        # R32: the MDT outcomes recorded against the person's studies, as supplementary reports.
        out += [mdt_report(f) for f in _mdt_outcomes(request).of_person(caller, person.pks)]
        return _page(request, search, out)

    return _searched(build, request, REPORT_PARAMS)


@router.get("/DiagnosticReport/{resource_id}")
def read_diagnostic_report(request: Request, caller: Caller, resource_id: str) -> JSONResponse:
    def build() -> dict[str, Any]:
        _scoped(request, caller, "DiagnosticReport", "r")
        mdt = outcome_id(resource_id)
        if mdt is not None:  # R32: an MDT outcome, ``mdt-<id>``
            return mdt_report(_mdt_outcomes(request).supplementary(caller, mdt))
        found = _records(request).report(caller, _key(resource_id, "report"))
        return fhir.diagnostic_report(found["report"], found["study"])

    return _answer(build)
