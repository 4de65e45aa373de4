"""IHE PIXm Patient Identity Feed FHIR (ITI-104, R5 "SHOULD"): a trust's patient identity
source creates or updates its own record with a conditional update,
``PUT /fhir/Patient?identifier=<trust's system>|<local ID>``, the FHIR twin of ADT A28/A31.

The Patient is read into the same ``Demographics`` an HL7 feed gives (name, birth date,
gender, NHS number with its UK Core verification status, address, telephone), and the identity
service applies the same rules: links, conflicts, the data-quality queue, PDS-sourced
demographics kept from untraced updates (R6). Merges and deletes are not taken here (use
ADT^A40 / A47): a Patient that is inactive or ``replaced-by`` is refused.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from solent.domain import nhs_number as nhs
from solent.domain.birth import in_the_future
from solent.domain.person_name import part_problem
from solent.domain.principal import Principal
from solent.protocols.fhir import resources as fhir
from solent.protocols.http_errors import http_error
from solent.security.http import current_principal
from solent.services.identity import Demographics, IdentityRejected, PatientKey
from solent.services.registry import Services

router = APIRouter()
Caller = Annotated[Principal, Depends(current_principal)]
FHIR_JSON = "application/fhir+json"
MAX_BODY = 256 * 1024
GENDER = {"male": "M", "female": "F", "other": "O"}  # unknown: nothing recorded
GENDERS = (*GENDER, "unknown")
#: What a Patient may be sent as (FHIR R4 JSON; no Content-Type is taken as that too).
BODY_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
#: Control characters no identifier may hold (DICOM LO, HL7 ST: printable text only).
CONTROL = frozenset(chr(c) for c in (*range(0x20), 0x7F))


class FeedError(Exception):
    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status, self.code, self.text = status, code, text


def _outcome(status: int, code: str, text: str) -> JSONResponse:
    return JSONResponse(
        fhir.operation_outcome(code, text), status_code=status, media_type=FHIR_JSON
    )


@router.put("/Patient")
async def feed_patient(
    request: Request,
    caller: Caller,
    identifier: Annotated[str | None, Query(max_length=200)] = None,
) -> JSONResponse:
    """Create (201) or update (200) the record ``identifier`` names; the answer is the
    Patient as read back."""
    services: Services = request.app.state.services
    body = await request.body()
    try:
        services.access.require_resource(caller, "Patient", "u")  # R23: a launch's scopes
        if len(request.query_params.getlist("identifier")) > 1:
            raise FeedError(400, "invalid", "identifier may be given once")
        key = _key(identifier)
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media and media not in BODY_TYPES:
            raise FeedError(
                415, "not-supported", f"Content-Type {media}: send application/fhir+json"
            )
        if len(body) > MAX_BODY:
            raise FeedError(413, "too-costly", f"a Patient of at most {MAX_BODY} bytes")
        demo = _demographics(body, key)
        pk, created = services.identity.feed(caller, key, demo)
        found = services.records.patient_record(caller, pk)
    except FeedError as exc:
        return _outcome(exc.status, exc.code, exc.text)
    except IdentityRejected as exc:
        return _outcome(422, "business-rule", str(exc))
    except Exception as exc:  # the one table (AccessDenied 403, InvalidInput 400 ...)
        mapped = http_error(exc)
        if mapped is None:
            raise
        status, text, code = mapped
        return _outcome(status, code, text)
    resource = fhir.patient(
        found["record"], retired=found["retired"], linked=found["linked"], contact=found["contact"]
    )
    headers = {"Location": f"{str(request.base_url).rstrip('/')}/fhir/Patient/{pk}"}
    return JSONResponse(
        resource, status_code=201 if created else 200, media_type=FHIR_JSON, headers=headers
    )


def _key(identifier: str | None) -> PatientKey:
    if not identifier or "|" not in identifier:
        raise FeedError(
            400, "required", "PUT /fhir/Patient?identifier=<trust's patient-id system>|<ID>"
        )
    system, value = identifier.split("|", 1)
    trust = fhir.trust_of_system(system, "patient-id")
    if len(value) > 64 or CONTROL & set(value) or value != value.strip():
        raise FeedError(
            400,
            "invalid",
            "identifier: a local ID of at most 64 characters, without control characters "
            "or leading and trailing spaces",
        )
    if trust is None or not value:
        raise FeedError(
            400,
            "invalid",
            f"identifier: a trust's local ID, {fhir.local_system('<ODS code>')}|<ID> "
            "(a record is keyed by its trust's identifier, not the NHS number)",
        )
    return PatientKey(trust, value)


def _demographics(body: bytes, key: PatientKey) -> Demographics:
    try:
        data = json.loads(body)
        if not isinstance(data, dict) or data.get("resourceType") != "Patient":
            raise FeedError(400, "invalid", "the body must be a FHIR Patient resource")
        Patient.model_validate(data)
    except RecursionError:  # json.loads of arrays or objects nested thousands deep
        raise FeedError(400, "invalid", "not a valid FHIR R4 Patient: nested too deep") from None
    except (ValueError, ValidationError) as exc:
        raise FeedError(400, "invalid", f"not a valid FHIR R4 Patient: {exc}"[:500]) from None
    if data.get("gender") is not None and data["gender"] not in GENDERS:
        raise FeedError(400, "invalid", f"gender: one of {', '.join(GENDERS)}")
    if len(data.get("birthDate") or "1970-01-01") != len("1970-01-01"):
        raise FeedError(400, "invalid", "birthDate: a full date, YYYY-MM-DD")
    if born := data.get("birthDate"):
        try:
            day = date.fromisoformat(born)
        except ValueError:
            raise FeedError(400, "invalid", f"birthDate {born!r} names no day") from None
        if in_the_future(day):
            raise FeedError(400, "invalid", f"birthDate {born} is in the future")
    ids = data.get("identifier") or []
    if not any(
        i.get("system") == fhir.local_system(key.issuer) and i.get("value") == key.local_id
        for i in ids
    ):
        raise FeedError(
            400, "invalid", f"Patient.identifier must carry the identifier of the URL ({key})"
        )
    if data.get("active") is False or any(
        link.get("type") in ("replaced-by", "replaces") for link in data.get("link") or []
    ):
        raise FeedError(
            422, "business-rule", "merges are not taken over FHIR here: send ADT^A40 (or A47)"
        )
    number, status = _nhs(ids)
    return Demographics(
        name=_name(data.get("name") or []),
        birth_date=(data.get("birthDate") or "").replace("-", "") or None,
        sex=GENDER.get(data.get("gender") or ""),
        nhs_number=number,
        nhs_status=status,
        address=_address(data.get("address") or []),
        phone=next(
            (
                t["value"]
                for t in data.get("telecom") or []
                if t.get("system") == "phone" and t.get("value")
            ),
            None,
        ),
    )


def _name(names: list[dict[str, Any]]) -> str | None:
    """The official (else first) HumanName as a DICOM PN: FAMILY^GIVEN^MIDDLE."""
    if not names:
        return None
    name = next((n for n in names if n.get("use") == "official"), names[0])
    given = [*(name.get("given") or []), "", ""]
    parts = [name.get("family") or "", given[0], given[1]]
    for part in parts:
        problem = part_problem(part)
        if problem is not None:
            raise FeedError(400, "invalid", f"name {part[:40]!r} {problem}")
    return "^".join(parts).rstrip("^") or None


def _nhs(ids: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """The NHS number and its PID-32-style status (NSTS01..08) from the UK Core extension."""
    found = next((i for i in ids if i.get("system") == nhs.NHS_FHIR_SYSTEM), None)
    if found is None:
        return None, None
    status = None
    for ext in found.get("extension") or []:
        if ext.get("url") == fhir.VERIFICATION_URL:
            codings = (ext.get("valueCodeableConcept") or {}).get("coding") or []
            code = next((c.get("code") for c in codings if c.get("code")), None)
            status = f"NSTS{code}" if code else None
    return found.get("value"), status


def _address(addresses: list[dict[str, Any]]) -> str | None:
    if not addresses:
        return None
    a = addresses[0]
    if a.get("text"):
        return str(a["text"])
    parts = [*(a.get("line") or []), a.get("city"), a.get("district"), a.get("postalCode")]
    return ", ".join(p for p in parts if p) or None
