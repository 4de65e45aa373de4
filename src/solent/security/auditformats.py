"""Audit records as DICOM PS3.15 A.5 audit messages (XML) and as FHIR AuditEvent (IHE BALP)."""

from __future__ import annotations

import base64
import json
from typing import Any
from xml.etree import ElementTree as ET

# action -> (EventID code, EventID display, EventActionCode, EventTypeCode (code, display)|None)
EVENTS: dict[str, tuple[str, str, str, tuple[str, str] | None]] = {
    "query": ("110112", "Query", "E", None),
    "view": ("110103", "DICOM Instances Accessed", "R", None),
    "retrieve": ("110104", "DICOM Instances Transferred", "R", None),
    "store": ("110104", "DICOM Instances Transferred", "C", None),
    "import": ("110107", "Import", "C", None),
    "export": ("110106", "Export", "R", None),
    "delete": ("110105", "DICOM Study Deleted", "D", None),
    "patient-record": ("110110", "Patient Record", "U", None),
    "order-record": ("110109", "Order Record", "U", None),
    "login": ("110114", "User Authentication", "E", ("110122", "Login")),
    "logout": ("110114", "User Authentication", "E", ("110123", "Logout")),
    "login-failed": ("110114", "User Authentication", "E", ("110122", "Login")),
    "permission-denied": (
        "110113",
        "Security Alert",
        "E",
        ("110132", "Use of Restricted Function"),
    ),
    "break-glass": ("110113", "Security Alert", "E", ("110127", "Emergency Override Started")),
    "audit-log-used": ("110101", "Audit Log Used", "R", None),
    "security-alert": ("110113", "Security Alert", "E", None),
    "user-admin": (
        "110113",
        "Security Alert",
        "E",
        ("110137", "User Security Attributes Changed"),
    ),
    "application-activity": ("110100", "Application Activity", "E", None),
}
OUTCOMES = {"success": "0", "denied": "4", "failure": "8", "error": "12"}
DCM = "http://dicom.nema.org/resources/ontology/DCM"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
AUDIT_SOURCE = "SOLENT"


#: IHE transactions a query record may name (its detail's "transaction"): IHE ATNA's
#: EventTypeCode of the query event, code system "IHE Transactions" (urn:ihe:event-type-code).
IHE_TRANSACTIONS = {
    "ITI-9": "PIX Query",
    "ITI-21": "Patient Demographics Query",
    "ITI-78": "Mobile Patient Demographics Query",
    "ITI-83": "Mobile Patient Identifier Cross-reference Query",
}
IHE_EVENT_TYPES = "urn:ihe:event-type-code"


def ihe_transaction(record: dict[str, Any]) -> tuple[str, str] | None:
    """(code, display) of the IHE transaction the record's detail names, if any."""
    try:
        detail = json.loads(record.get("detail") or "{}")
    except ValueError:
        return None
    code = detail.get("transaction") if isinstance(detail, dict) else None
    return (code, IHE_TRANSACTIONS[code]) if code in IHE_TRANSACTIONS else None


def event_of(record: dict[str, Any]) -> tuple[str, str, str, tuple[str, str] | None]:
    return EVENTS.get(record["action"], EVENTS["application-activity"])


def _code(parent: ET.Element, tag: str, code: str, system: str, text: str) -> None:
    ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": text})


def dicom_xml(record: dict[str, Any]) -> str:
    """One PS3.15 A.5.1 AuditMessage (the DICOM profile of RFC 3881)."""
    event_id, event_name, action_code, event_type = event_of(record)
    msg = ET.Element("AuditMessage")
    ev = ET.SubElement(
        msg,
        "EventIdentification",
        {
            "EventActionCode": action_code,
            "EventDateTime": record["at"],
            "EventOutcomeIndicator": OUTCOMES.get(record["outcome"], "8"),
        },
    )
    _code(ev, "EventID", event_id, "DCM", event_name)
    if event_type:
        _code(ev, "EventTypeCode", event_type[0], "DCM", event_type[1])
    if transaction := ihe_transaction(record):
        _code(ev, "EventTypeCode", transaction[0], "IHE Transactions", transaction[1])
    if record.get("purpose"):
        _code(ev, "PurposeOfUse", record["purpose"], "Solent", record["purpose"])
    user = ET.SubElement(
        msg,
        "ActiveParticipant",
        {
            "UserID": record["actor_name"],
            "AlternativeUserID": f"{record['actor_kind']}:{record['actor_name']}",
            "UserName": f"{record['actor_name']}@{record['actor_trust'] or '-'}",
            "UserIsRequestor": "true",
            **(
                {
                    "NetworkAccessPointID": record["actor_address"],
                    "NetworkAccessPointTypeCode": "2",
                }
                if record.get("actor_address")
                else {}
            ),
        },
    )
    for role in filter(None, (record.get("actor_roles") or "").split(",")):
        _code(user, "RoleIDCode", role, "Solent", role)
    ET.SubElement(
        msg,
        "ActiveParticipant",
        {"UserID": AUDIT_SOURCE, "UserIsRequestor": "false"},
    )
    ET.SubElement(
        msg,
        "AuditSourceIdentification",
        {"AuditSourceID": AUDIT_SOURCE, "AuditEnterpriseSiteID": record["actor_trust"] or ""},
    )
    if record.get("patient_id"):
        po = ET.SubElement(
            msg,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": f"{record['patient_id']}^^^{record['patient_issuer']}",
                "ParticipantObjectTypeCode": "1",
                "ParticipantObjectTypeCodeRole": "1",
            },
        )
        _code(po, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
        if record.get("nhs_number"):
            ET.SubElement(
                po,
                "ParticipantObjectDetail",
                {
                    "type": "NHSNumber",
                    "value": base64.b64encode(record["nhs_number"].encode()).decode(),
                },
            )
    if record.get("study_uid"):
        so = ET.SubElement(
            msg,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": record["study_uid"],
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
            },
        )
        _code(so, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
    trail = ET.SubElement(
        msg,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": str(record["seq"]),
            "ParticipantObjectTypeCode": "4",
            "ParticipantObjectTypeCodeRole": "13",
        },
    )
    _code(trail, "ParticipantObjectIDTypeCode", "seq", "Solent", "Solent audit record")
    ET.SubElement(trail, "ParticipantObjectDetail", {"type": "hash", "value": record["hash"]})
    if record.get("detail"):
        ET.SubElement(
            trail,
            "ParticipantObjectDetail",
            {"type": "detail", "value": base64.b64encode(record["detail"].encode()).decode()},
        )
    return ET.tostring(msg, encoding="unicode")


_BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
_BALP_PATIENT = {
    "C": "PatientCreate",
    "R": "PatientRead",
    "U": "PatientUpdate",
    "D": "PatientDelete",
}


def fhir_audit_event(record: dict[str, Any]) -> dict[str, Any]:
    """A FHIR R4 AuditEvent following the IHE BALP patient-centric patterns."""
    event_id, event_name, action_code, event_type = event_of(record)
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(record["seq"]),
        "type": {"system": DCM, "code": event_id, "display": event_name},
        "action": action_code,
        "recorded": record["at"],
        "outcome": OUTCOMES.get(record["outcome"], "8"),
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                            "code": "humanuser"
                            if record["actor_kind"] == "user"
                            else "dataprocessor",
                        }
                    ]
                },
                "who": {
                    "identifier": {
                        "system": f"urn:solent:{record['actor_kind']}",
                        "value": record["actor_name"],
                        **(
                            {"assigner": {"display": record["actor_trust"]}}
                            if record.get("actor_trust")
                            else {}
                        ),
                    },
                    "display": f"{record['actor_name']}@{record['actor_trust'] or '-'}",
                },
                "requestor": True,
                "role": [{"text": r} for r in (record.get("actor_roles") or "").split(",") if r],
                **(
                    {"network": {"address": record["actor_address"], "type": "2"}}
                    if record.get("actor_address")
                    else {}
                ),
            }
        ],
        "source": {
            "site": record.get("actor_trust") or AUDIT_SOURCE,
            "observer": {"display": "Solent PACS"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
        "entity": [],
    }
    if event_type:
        event["subtype"] = [{"system": DCM, "code": event_type[0], "display": event_type[1]}]
    if transaction := ihe_transaction(record):
        event["subtype"] = [
            *event.get("subtype", []),
            {"system": IHE_EVENT_TYPES, "code": transaction[0], "display": transaction[1]},
        ]
    if record.get("purpose"):
        event["purposeOfEvent"] = [{"text": record["purpose"]}]
    entities: list[dict[str, Any]] = event["entity"]
    if record.get("patient_id"):
        event["meta"] = {"profile": [_BALP + _BALP_PATIENT.get(action_code, "PatientRead")]}
        entities.append(
            {
                "what": {
                    "identifier": {
                        "system": f"urn:solent:trust:{record['patient_issuer']}",
                        "value": record["patient_id"],
                    }
                },
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "1",
                    "display": "Person",
                },
                "role": {
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "code": "1",
                    "display": "Patient",
                },
            }
        )
        if record.get("nhs_number"):
            entities.append(
                {
                    "what": {
                        "identifier": {"system": NHS_NUMBER_SYSTEM, "value": record["nhs_number"]}
                    },
                    "type": {
                        "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                        "code": "1",
                    },
                    "role": {
                        "system": "http://terminology.hl7.org/CodeSystem/object-role",
                        "code": "1",
                    },
                }
            )
    if record.get("study_uid"):
        entities.append(
            {
                "what": {
                    "identifier": {
                        "system": "urn:dicom:uid",
                        "value": f"urn:oid:{record['study_uid']}",
                    }
                },
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "2",
                    "display": "System Object",
                },
                "role": {
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "code": "3",
                    "display": "Report",
                },
            }
        )
    detail = [{"type": "hash", "valueString": record["hash"]}]
    if record.get("detail"):
        detail.append({"type": "detail", "valueString": record["detail"]})
    entities.append(
        {
            "what": {"identifier": {"system": "urn:solent:audit", "value": str(record["seq"])}},
            "detail": detail,
        }
    )
    return event


def fhir_bundle(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(records),
        "entry": [{"resource": fhir_audit_event(r)} for r in records],
    }


def fhir_json(record: dict[str, Any]) -> str:
    return json.dumps(fhir_audit_event(record), separators=(",", ":"))
