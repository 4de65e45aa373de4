"""The audit trail every service writes to: who did what to which patient, when, from where.

One call, ``audit.record(principal, action, outcome, patient=..., study_uid=..., purpose=...)``,
whatever the protocol. Records are append-only and hash-chained (see ``index/audit.py``);
``verify()`` proves the chain, exports turn records into DICOM audit messages and FHIR AuditEvents.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection

from solent.domain.principal import Principal
from solent.index import audit as store
from solent.index.sql import Index

log = logging.getLogger(__name__)


class AuditAction(StrEnum):
    """What happened; each maps to one DICOM PS3.15 A.5 audit event (see security/auditformats)."""

    QUERY = "query"
    VIEW = "view"  # DICOM Instances Accessed: metadata, rendered or raw images of a study
    RETRIEVE = "retrieve"  # instances sent out (C-MOVE/C-GET, WADO-RS download)
    STORE = "store"  # instances received (C-STORE, STOW-RS)
    IMPORT = "import"
    EXPORT = "export"
    DELETE = "delete"
    PATIENT_RECORD = "patient-record"  # create / update / merge / link of a patient record
    ORDER_RECORD = "order-record"
    LOGIN = "login"
    LOGOUT = "logout"
    LOGIN_FAILED = "login-failed"
    PERMISSION_DENIED = "permission-denied"
    BREAK_GLASS = "break-glass"
    AUDIT_LOG_USED = "audit-log-used"
    SECURITY_ALERT = "security-alert"
    USER_ADMIN = "user-admin"  # users, roles and tokens changed
    APPLICATION_ACTIVITY = "application-activity"


class AuditOutcome(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"  # refused by authorization
    FAILURE = "failure"  # the request was wrong (bad input, rejected instance)
    ERROR = "error"  # we failed


@dataclass(frozen=True, slots=True)
class PatientRef:
    """A patient record as audited: the issuing trust, the local ID, and the NHS number."""

    issuer: str
    local_id: str
    nhs_number: str | None = None


def utc_stamp(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")


def audit_fields(
    principal: Principal,
    action: AuditAction | str,
    outcome: AuditOutcome | str = AuditOutcome.SUCCESS,
    *,
    patient: PatientRef | None = None,
    study_uid: str | None = None,
    purpose: str | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The row of one audit record (without seq and hashes)."""
    return {
        "at": utc_stamp(),
        "action": AuditAction(action).value,
        "outcome": AuditOutcome(outcome).value,
        "actor_kind": principal.kind.value,
        "actor_name": principal.name[:200],
        "actor_trust": principal.trust,
        "actor_roles": ",".join(sorted(principal.roles)),
        "actor_address": (principal.address or None) and str(principal.address)[:64],
        "patient_issuer": patient.issuer if patient else None,
        "patient_id": patient.local_id if patient else None,
        "nhs_number": patient.nhs_number if patient else None,
        "study_uid": study_uid,
        "purpose": purpose[:200] if purpose else None,
        "detail": json.dumps(detail, sort_keys=True, separators=(",", ":"), default=str)
        if detail
        else None,
    }


class AuditTrail:
    """Writes and reads the audit trail of one archive."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def record(
        self,
        principal: Principal,
        action: AuditAction | str,
        outcome: AuditOutcome | str = AuditOutcome.SUCCESS,
        *,
        patient: PatientRef | None = None,
        study_uid: str | None = None,
        purpose: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Append one record in its own transaction; returns its sequence number.

        Without ``patient``, the patient of ``study_uid`` (if stored) is looked up and recorded.
        """
        fields = audit_fields(
            principal,
            action,
            outcome,
            patient=patient,
            study_uid=study_uid,
            purpose=purpose,
            detail=detail,
        )
        return self.index.write(lambda conn: self.append_in(conn, fields))

    @staticmethod
    def append_in(conn: Connection, fields: dict[str, Any]) -> int:
        """Append inside the caller's write transaction (ingest: audit and index commit as one)."""
        if fields.get("patient_id") is None and fields.get("study_uid"):
            found = store.patient_of_study(conn, fields["study_uid"])
            if found is not None:
                fields = {
                    **fields,
                    "patient_issuer": found[0],
                    "patient_id": found[1],
                    "nhs_number": found[2],
                }
        return store.append(conn, fields)

    def verify(self) -> store.VerifyReport:
        return store.verify(self.index)

    def search(self, **criteria: Any) -> list[dict[str, Any]]:
        return store.search(self.index, **criteria)

    def iter_records(self, after_seq: int = 0) -> Any:
        return store.iter_records(self.index, after_seq)
