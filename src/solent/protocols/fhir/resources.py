"""FHIR R4 resources built from index rows, each validated with fhir.resources before it leaves.

fhir.resources ships R4B models (R4 plus technical corrections); Patient, ImagingStudy,
Endpoint, DiagnosticReport, DocumentReference, Bundle, OperationOutcome and
CapabilityStatement read the same.
"""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.patient import Patient

from solent import __version__
from solent.domain.nhs_number import NHS_FHIR_SYSTEM

ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
VERIFICATION_URL = (
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
)
VERIFICATION_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"
VERIFICATION_DISPLAY = {
    "01": "Number present and verified",
    "02": "Number present but not traced",
    "03": "Trace required",
    "04": "Trace attempted - No match or multiple match found",
    "05": "Trace needs to be resolved - (NHS Number or patient detail conflict)",
    "06": "Trace in progress",
    "07": "Number not present and trace not required",
    "08": "Trace postponed (baby under six weeks old)",
}
PIXM_OPERATION = "https://profiles.ihe.net/ITI/PIXm/OperationDefinition/IHE.PIXm.pix"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
FHIR_JSON = "application/fhir+json"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
REPORT_STATUS = {
    "P": "preliminary",
    "F": "final",
    "C": "corrected",
    "A": "appended",
    "R": "registered",
    "I": "registered",
    "S": "partial",
    "X": "cancelled",
}


def local_system(trust: str) -> str:
    """The identifier system of one trust's hospital numbers."""
    return f"https://solent-pacs.nhs.example/Id/{trust}/patient-id"


def accession_system(trust: str) -> str:
    return f"https://solent-pacs.nhs.example/Id/{trust}/accession"


def trust_of_system(system: str, kind: str) -> str | None:
    prefix, suffix = "https://solent-pacs.nhs.example/Id/", f"/{kind}"
    if system.startswith(prefix) and system.endswith(suffix):
        return system[len(prefix) : -len(suffix)] or None
    return None


def _date(da: str | None) -> str | None:
    """A DICOM/HL7 date as a FHIR date; None for one that is no calendar date (19801399, as
    images and feeds may carry), which the FHIR model would refuse."""
    if not da or len(da) != 8 or not da.isdigit():
        return None
    try:
        return date(int(da[:4]), int(da[4:6]), int(da[6:])).isoformat()
    except ValueError:
        return None


def _datetime(da: str | None, tm: str | None) -> str | None:
    """DICOM date and time (the modality's wall clock, in England) as a FHIR dateTime with
    its UTC offset: 09:30 on a June day is 09:30+01:00, not 09:30Z (an hour late)."""
    day = _date(da)
    if day is None:
        return None
    digits = (tm or "").split(".")[0]
    if len(digits) >= 4 and digits.isdigit():
        try:
            moment = datetime.fromisoformat(
                f"{day}T{digits[:2]}:{digits[2:4]}:{digits[4:6] or '00'}"
            )
        except ValueError:
            return day
        return uk_local(moment).isoformat()
    return day


_GMT = UTC
_BST = timezone(timedelta(hours=1))


def uk_local(moment: datetime) -> datetime:
    """A wall-clock time in England as an aware datetime: BST (+01:00) from 01:00 UTC on the
    last Sunday of March to 01:00 UTC on the last Sunday of October, GMT otherwise. DICOM
    dates and times are the modality's local time, and the region's modalities are in
    England. No tz database needed (slim images often have none)."""
    as_utc_if_bst = moment - timedelta(hours=1)
    start = _last_sunday(moment.year, 3).replace(hour=1)
    end = _last_sunday(moment.year, 10).replace(hour=1)
    return moment.replace(tzinfo=_BST if start <= as_utc_if_bst < end else _GMT)


def _last_sunday(year: int, month: int) -> datetime:
    last = datetime(year, month, 31)
    return last - timedelta(days=(last.weekday() + 1) % 7)


def _gender(sex: str | None) -> str:
    return {"M": "male", "F": "female", "O": "other"}.get(sex or "", "unknown")


def _human_name(pn: str | None) -> list[dict[str, Any]]:
    if not pn:
        return []
    parts = ([*pn.split("=")[0].split("^"), "", "", "", "", ""])[:5]
    family, given, middle, prefix, suffix = parts
    # As the PAS recorded them: title-casing would make "McDonald" "Mcdonald" and
    # "MacLEOD" "Macleod", and an EPR comparing names would see another person.
    text = " ".join(p for p in (given, middle, family) if p)
    name: dict[str, Any] = {"use": "official", "text": text}
    if family:
        name["family"] = family
    givens = [g for g in (given, middle) if g]
    if givens:
        name["given"] = givens
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return [name]


def _valid(model: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Validate against the FHIR model; a failure is our bug, so it raises."""
    model.model_validate(data)
    return data


def patient(
    record: dict[str, Any],
    *,
    retired: list[dict[str, Any]],
    linked: list[int],
    contact: dict[str, Any] | None,
) -> dict[str, Any]:
    trust = record["issuer"]
    identifiers: list[dict[str, Any]] = [
        {
            "use": "usual",
            "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
            "system": local_system(trust),
            "value": record["local_id"],
            "assigner": {"identifier": {"system": ODS_SYSTEM, "value": trust}},
        }
    ]
    if record["nhs_number"] and record["nhs_number_valid"]:
        status = (contact or {}).get("nhs_number_status") or ""
        code = "01" if record["nhs_number_verified"] else (status[-2:] or "02")
        if code == "01" and not record["nhs_number_verified"]:
            code = "02"
        identifiers.append(
            {
                "extension": [
                    {
                        "url": VERIFICATION_URL,
                        "valueCodeableConcept": {
                            "coding": [
                                {
                                    "system": VERIFICATION_SYSTEM,
                                    "code": code,
                                    "display": VERIFICATION_DISPLAY.get(code, code),
                                }
                            ]
                        },
                    }
                ],
                "system": NHS_FHIR_SYSTEM,
                "value": record["nhs_number"],
            }
        )
    for r in retired:
        identifiers.append(
            {
                "use": "old",
                "system": local_system(r["issuer"]),
                "value": r["local_id"],
                "assigner": {"identifier": {"system": ODS_SYSTEM, "value": r["issuer"]}},
            }
        )
    data: dict[str, Any] = {
        "resourceType": "Patient",
        "id": str(record["pk"]),
        "identifier": identifiers,
        "active": True,
        "gender": _gender(record["sex"]),
        "managingOrganization": {"identifier": {"system": ODS_SYSTEM, "value": trust}},
    }
    if names := _human_name(record["name"]):
        data["name"] = names
    if birth := _date(record["birth_date"]):
        data["birthDate"] = birth
    if contact and not contact["sensitive"]:
        if contact["address"]:
            data["address"] = [{"text": contact["address"]}]
        if contact["phone"]:
            data["telecom"] = [{"system": "phone", "value": contact["phone"]}]
    if linked:
        data["link"] = [
            {"other": {"reference": f"Patient/{pk}"}, "type": "seealso"} for pk in sorted(linked)
        ]
    return _valid(Patient, data)


def pix_parameters(found: list[tuple[str, str, int | None]]) -> dict[str, Any]:
    """IHE PIXm (ITI-83) answer: a targetIdentifier per identifier (system, value) and a
    targetId per Patient resource that holds one (NHS numbers are carried by the records)."""
    params: list[dict[str, Any]] = [
        {"name": "targetIdentifier", "valueIdentifier": {"system": system, "value": value}}
        for system, value, _ in found
    ]
    pks = sorted({pk for system, _, pk in found if pk is not None and system != NHS_FHIR_SYSTEM})
    params += [{"name": "targetId", "valueReference": {"reference": f"Patient/{pk}"}} for pk in pks]
    data: dict[str, Any] = {"resourceType": "Parameters"}
    if params:
        data["parameter"] = params
    return _valid(Parameters, data)


def subject_reference(record: dict[str, Any]) -> dict[str, Any]:
    """A resource's subject: the record (patient_pk, issuer, local_id) with its identifier."""
    issuer = record["issuer"]
    return {
        "reference": f"Patient/{record['patient_pk']}",
        "identifier": {
            "system": local_system(issuer),
            "value": record["local_id"],
            "assigner": {"identifier": {"system": ODS_SYSTEM, "value": issuer}},
        },
    }


def accession_identifier(study: dict[str, Any]) -> dict[str, Any]:
    """A study's accession number with its issuing trust (R16: never the number alone)."""
    trust = study["trust_code"]
    return {
        "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
        "system": accession_system(study["accession_issuer"] or trust),
        "value": study["accession_number"],
        "assigner": {"identifier": {"system": ODS_SYSTEM, "value": trust}},
    }


def study_started(study: dict[str, Any]) -> str | None:
    return _datetime(study["study_date"], study["study_time"])


def document_reference(data: dict[str, Any]) -> dict[str, Any]:
    return _valid(DocumentReference, data)


def imaging_study(
    study: dict[str, Any],
    series: list[dict[str, Any]],
    *,
    base_url: str,
    subject: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``subject``: the record the caller's trust knows the person by (patient_pk, issuer,
    local_id; IdentityService.subject_seen_by), the study's own record when not given."""
    trust = study["trust_code"]
    uid = study["study_uid"]
    if subject is None:
        subject = {k: study[k] for k in ("patient_pk", "issuer", "local_id")}
    identifiers: list[dict[str, Any]] = [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}]
    if study["accession_number"]:
        identifiers.append(accession_identifier(study))
    endpoints = [
        {
            "resourceType": "Endpoint",
            "id": "wado",
            "status": "active",
            "connectionType": {"system": CONNECTION_TYPE, "code": "dicom-wado-rs"},
            "payloadType": [{"text": "DICOM"}],
            "payloadMimeType": ["application/dicom"],
            "address": f"{base_url}/dicomweb",
        },
        {
            "resourceType": "Endpoint",
            "id": "iid",
            "status": "active",
            "connectionType": {"system": CONNECTION_TYPE, "code": "ihe-iid"},
            "payloadType": [{"text": "DICOM"}],
            "address": (
                f"{base_url}/trusts/{trust}/IHEInvokeImageDisplay?requestType=STUDY&studyUID={uid}"
            ),
        },
    ]
    modalities = [m for m in (study["modalities"] or "").split("\\") if m]
    data: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": str(study["study_pk"]),
        "contained": endpoints,
        "identifier": identifiers,
        "status": "available",
        "subject": subject_reference(subject),
        "endpoint": [{"reference": "#wado"}, {"reference": "#iid"}],
        "numberOfSeries": int(study["num_series"] or 0),
        "numberOfInstances": int(study["num_instances"] or 0),
    }
    if modalities:
        data["modality"] = [{"system": DCM, "code": m} for m in modalities]
    if started := study_started(study):
        data["started"] = started
    if study["study_description"]:
        data["description"] = study["study_description"]
    out_series = []
    for s in series:
        item: dict[str, Any] = {
            "uid": s["series_uid"],
            "modality": {"system": DCM, "code": s["modality"] or "OT"},
            "numberOfInstances": int(s["num_instances"] or 0),
        }
        if s["series_number"] is not None:
            item["number"] = int(s["series_number"])
        if s["series_description"]:
            item["description"] = s["series_description"]
        if s["body_part"]:
            item["bodySite"] = {"display": s["body_part"]}
        out_series.append(item)
    if out_series:
        data["series"] = out_series
    return _valid(ImagingStudy, data)


def diagnostic_report(report: dict[str, Any], study: dict[str, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": str(report["pk"]),
        "meta": {"versionId": str(report["version"])},
        "identifier": [
            {
                "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                "system": accession_system(report["accession_issuer"]),
                "value": report["accession_number"],
            }
        ],
        "status": REPORT_STATUS.get(report["status"], "unknown"),
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                        "code": "RAD",
                        "display": "Radiology",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {
                    "system": "http://loinc.org",
                    "code": "18748-4",
                    "display": "Diagnostic imaging study",
                }
            ],
            "text": report["procedure"] or "Imaging report",
        },
        "conclusion": report["text"][:10000],
        "presentedForm": [
            {
                "contentType": "text/plain; charset=utf-8",
                "data": base64.b64encode(report["text"].encode("utf-8")).decode("ascii"),
                "title": f"Report version {report['version']}",
            }
        ],
    }
    if study is not None:
        data["subject"] = {"reference": f"Patient/{study['patient_pk']}"}
        data["imagingStudy"] = [{"reference": f"ImagingStudy/{study['pk']}"}]
    obs = report["observed_at"] or ""
    if when := _datetime(obs[:8], obs[8:14]):
        data["effectiveDateTime"] = when
    if report["interpreter"]:
        data["resultsInterpreter"] = [{"display": report["interpreter"].replace("^", " ")}]
    return _valid(DiagnosticReport, data)


def bundle(
    resources: list[dict[str, Any]],
    *,
    base_url: str,
    total: int | None = None,
    links: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A searchset: ``total`` is every match (the page may hold fewer), ``links`` self and
    paging links."""
    data: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources) if total is None else total,
        "entry": [
            {
                "fullUrl": f"{base_url}/fhir/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }
    if links:
        data["link"] = links
    return _valid(Bundle, data)


def operation_outcome(code: str, text: str) -> dict[str, Any]:
    data = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
    return _valid(OperationOutcome, data)


def capability_statement(base_url: str) -> dict[str, Any]:
    def res(kind: str, params: list[tuple[str, str, str]]) -> dict[str, Any]:
        return {
            "type": kind,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [{"name": n, "type": t, "documentation": d} for n, t, d in params],
        }

    data = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-27",
        "kind": "instance",
        "software": {"name": "Solent PACS", "version": __version__},
        "implementation": {
            "description": "Solent PACS FHIR R4 read API",
            "url": f"{base_url}/fhir",
        },
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "searchParam": [
                    {"name": "_count", "type": "number", "documentation": "page size"},
                    {"name": "_sort", "type": "string", "documentation": "ImagingStudy: started"},
                ],
                "resource": [
                    {
                        **res(
                            "Patient",
                            [
                                ("identifier", "token", "NHS number or a trust's local ID"),
                                ("_id", "token", "resource id"),
                                ("family", "string", "PDQm: family name starts with (:exact)"),
                                ("given", "string", "PDQm: a given name starts with (:exact)"),
                                ("birthdate", "date", "PDQm: date of birth (a day)"),
                                ("gender", "token", "PDQm: male, female, other, unknown"),
                                ("active", "token", "PDQm: every record held is active"),
                            ],
                        ),
                        # ITI-104: PUT /fhir/Patient?identifier=... (integration accounts)
                        "interaction": [
                            {"code": "read"},
                            {"code": "search-type"},
                            {"code": "update"},
                        ],
                        "conditionalUpdate": True,
                        "operation": [
                            {
                                "name": "ihe-pix",
                                "definition": PIXM_OPERATION,
                                "documentation": "IHE PIXm ITI-83 identifier cross-reference",
                            }
                        ],
                    },
                    res(
                        "ImagingStudy",
                        [
                            ("patient.identifier", "token", "every study of the person"),
                            ("patient", "reference", "every study of the person"),
                            ("subject", "reference", "as patient"),
                            ("identifier", "token", "Study Instance UID or accession"),
                            ("modality", "token", "DICOM modality of the study or a series"),
                            ("started", "date", "when the study started (prefixes eq..le)"),
                        ],
                    ),
                    res(
                        "DiagnosticReport",
                        [
                            ("patient.identifier", "token", "every report of the person"),
                            ("patient", "reference", "every report of the person"),
                            ("subject", "reference", "as patient"),
                        ],
                    ),
                    res(
                        "DocumentReference",
                        [
                            ("patient.identifier", "token", "IHE MHD ITI-67: every study manifest"),
                            ("patient", "reference", "every study manifest of the person"),
                            ("subject", "reference", "as patient"),
                            ("status", "token", "current (a withdrawn study has no manifest)"),
                        ],
                    ),
                    {
                        "type": "Binary",
                        "interaction": [{"code": "read"}],
                        "documentation": "IHE MHD ITI-68: a study's DICOM KOS manifest",
                    },
                ],
            }
        ],
    }
    return _valid(CapabilityStatement, data)
