"""An MDT outcome (R32) as a FHIR R4 DiagnosticReport: the supplementary radiology report of
the studies an MDT reviewed. Ids are ``mdt-<outcome id>``, apart from the RIS reports' numeric
ids, so both kinds live under /fhir/DiagnosticReport without colliding."""

from __future__ import annotations

import base64
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from solent.services.mdt_outcomes import SupplementaryReport

PREFIX = "mdt-"


def outcome_id(resource_id: str) -> int | None:
    """The outcome an ``mdt-<n>`` resource id names; None for any other id."""
    if not resource_id.startswith(PREFIX):
        return None
    digits = resource_id[len(PREFIX) :]
    return int(digits) if digits.isdigit() and len(digits) <= 18 and digits[0] != "0" else None


def text_of(outcome: dict[str, Any]) -> str:
    """The report's plain text: opinion, plan, the discrepancy with the original report."""
    parts = [f"MDT opinion: {outcome['opinion']}"]
    if outcome["plan"]:
        parts.append(f"Plan: {outcome['plan']}")
    if outcome["discrepancy"]:
        parts.append(f"Discrepancy with the original report: {outcome['discrepancy_note']}")
    return "\n".join(parts)


def mdt_report(found: SupplementaryReport) -> dict[str, Any]:
    o = found.outcome
    text = text_of(o)
    by = f"{o['by']} ({o['trust']})" if o["trust"] else o["by"]
    data: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": f"{PREFIX}{o['id']}",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                        "code": "RAD",
                        "display": "Radiology",
                    }
                ],
                "text": "MDT outcome",
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
            "text": "MDT radiology outcome (supplementary report)",
        },
        "subject": {"reference": f"Patient/{found.patient_pk}"},
        "effectiveDateTime": o["at"],
        "issued": o["at"],
        "resultsInterpreter": [{"display": by}],
        "imagingStudy": [{"reference": f"ImagingStudy/{pk}"} for pk in found.study_pks],
        "conclusion": text[:10000],
        "presentedForm": [
            {
                "contentType": "text/plain; charset=utf-8",
                "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
                "title": f"MDT outcome {o['id']}",
            }
        ],
    }
    DiagnosticReport.model_validate(data)  # a failure is our bug: raise
    return data
