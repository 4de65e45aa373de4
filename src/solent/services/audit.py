"""The audit trail every service writes to: who did what to which patient, when, from where.

One call, ``audit.record(principal, action, outcome, patient=..., study_uid=..., purpose=...)``,
whatever the protocol. Records are append-only and hash-chained (see ``index/audit.py``);
``verify()`` proves the chain, exports turn records into DICOM audit messages and FHIR AuditEvents.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection

from solent.domain.principal import Principal
from solent.index import audit as store
from solent.index.sql import Index

log = logging.getLogger(__name__)

#: A viewer asks for one rendered image or frame per request, hundreds per study: the same
#: caller viewing the same study through the same channel is recorded once per this window.
VIEW_WINDOW_S = 300.0


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


#: Records of reads, committed without waiting for the disk (``Index.write(relaxed=True)``):
#: durable within half a second, and never lost to a crash of Solent itself. Changes of data
#: (store, identity, break-glass, users) are audited in fsynced transactions.
READ_ACTIONS = frozenset(
    {
        AuditAction.QUERY.value,
        AuditAction.VIEW.value,
        AuditAction.RETRIEVE.value,
        AuditAction.EXPORT.value,
        AuditAction.LOGIN.value,
        AuditAction.LOGOUT.value,
        AuditAction.AUDIT_LOG_USED.value,
    }
)


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


def actor_roles(principal: Principal) -> str:
    """The roles in force for the audit record: the national job role first (R33/R36: the
    R-code the session acted under, at ``actor_trust``), then the Solent roles."""
    names = sorted(principal.roles)
    if principal.national is not None:
        names = [principal.national.job_role, *names]
    return ",".join(names)[:200]


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
        "actor_roles": actor_roles(principal),
        "actor_address": (principal.address or None) and str(principal.address)[:64],
        "patient_issuer": patient.issuer if patient else None,
        "patient_id": patient.local_id if patient else None,
        "nhs_number": patient.nhs_number if patient else None,
        "study_uid": study_uid,
        "purpose": (purpose or principal.purpose or "")[:200] or None,
        "detail": json.dumps(detail, sort_keys=True, separators=(",", ":"), default=str)
        if detail
        else None,
    }


def patient_of_rows(rows: Iterable[Mapping[str, Any]]) -> PatientRef | None:
    """The one patient record query result rows belong to, or None (no rows, or several)."""
    found: PatientRef | None = None
    for row in rows:
        issuer, local_id = row.get("IssuerOfPatientID"), row.get("PatientID")
        if not issuer or not local_id:
            return None
        ref = PatientRef(str(issuer), str(local_id), row.get("NHSNumber") or None)
        if found is not None and (found.issuer, found.local_id) != (ref.issuer, ref.local_id):
            return None
        found = ref
    return found


class AuditTrail:
    """Writes and reads the audit trail of one archive."""

    def __init__(self, index: Index) -> None:
        self._index = index
        self._recent: dict[tuple[str, ...], float] = {}
        self._recent_lock = threading.Lock()

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
        return self._append_each(
            lambda conn: [self.naming_patient(conn, fields)],
            relaxed=fields["action"] in READ_ACTIONS,
        )[0]

    def record_each(self, records: list[dict[str, Any]]) -> list[int]:
        """Append several records made with ``audit_fields`` (a listing that names a patient
        per row) together: one transaction on SQLite instead of one each."""
        if not records:
            return []
        relaxed = all(f["action"] in READ_ACTIONS for f in records)
        return self._append_each(lambda conn: records, relaxed=relaxed)

    def _append_each(
        self, fields_of: Callable[[Connection], list[dict[str, Any]]], *, relaxed: bool
    ) -> list[int]:
        """Append the records ``fields_of`` makes (it may read, e.g. a study's patient).

        PostgreSQL: the read in a transaction of its own (psycopg begins it only if it reads),
        then each record in one message that holds the chain's lock inside the server only.
        SQLite: read and records in one write transaction (one writer at a time anyway)."""
        if self._index.dialect == "postgresql":
            with self._index.read() as conn:
                records = fields_of(conn)
            return [store.append_alone(self._index, f, relaxed=relaxed) for f in records]
        return self._index.write(
            lambda conn: [store.append(conn, f) for f in fields_of(conn)], relaxed=relaxed
        )

    def coalesces(
        self,
        principal: Principal,
        action: AuditAction | str,
        *,
        study_uid: str,
        channel: str,
        window_s: float = VIEW_WINDOW_S,
    ) -> bool:
        """True when `record_coalesced` would write nothing now: the record of this access is
        within its window (so a caller that may not wait for a write can go on)."""
        last = self._recent.get(_coalescing_key(principal, action, study_uid, channel))
        return last is not None and time.monotonic() - last < window_s

    def record_coalesced(
        self,
        principal: Principal,
        action: AuditAction | str,
        *,
        study_uid: str,
        channel: str,
        detail: dict[str, Any] | None = None,
        window_s: float = VIEW_WINDOW_S,
    ) -> int | None:
        """Record unless the same caller had the same access to the same study through the
        same channel within ``window_s`` (per process); returns the seq, or None if coalesced.

        For per-image requests (rendered, thumbnail, frames): the first request of a viewing
        session leaves the record, the following hundreds cost a dictionary look-up.
        """
        key = _coalescing_key(principal, action, study_uid, channel)
        now = time.monotonic()
        with self._recent_lock:
            last = self._recent.get(key)
            if last is not None and now - last < window_s:
                return None
            self._recent[key] = now
            if len(self._recent) > 10_000:
                self._recent = {k: v for k, v in self._recent.items() if now - v < window_s}
        try:
            return self.record(
                principal,
                action,
                study_uid=study_uid,
                detail={"channel": channel, **(detail or {})},
            )
        except Exception:
            with self._recent_lock:
                self._recent.pop(key, None)  # not recorded: the next request tries again
            raise

    def record_studies(
        self,
        principal: Principal,
        action: AuditAction | str,
        study_uids: Iterable[str],
        outcome: AuditOutcome | str = AuditOutcome.SUCCESS,
        *,
        detail: dict[str, Any] | None = None,
    ) -> list[int]:
        """One record per patient whose studies a request touched (a retrieve naming several
        studies of one patient is one record), in one transaction, so searching the trail by
        patient finds every one of them. The studies go in ``detail["studies"]``."""
        studies = sorted(set(study_uids))
        base = audit_fields(principal, action, outcome, detail=None)

        def by_patient_of(conn: Connection) -> dict[Any, list[str]]:
            by_patient: dict[tuple[str, str, str | None] | None, list[str]] = {}
            for uid in studies:
                by_patient.setdefault(store.patient_of_study(conn, uid), []).append(uid)
            if not by_patient:
                by_patient[None] = []
            return by_patient

        def records(by_patient: dict[Any, list[str]]) -> list[dict[str, Any]]:
            out = []
            for patient, uids in by_patient.items():
                out.append(
                    {
                        **base,
                        "patient_issuer": patient[0] if patient else None,
                        "patient_id": patient[1] if patient else None,
                        "nhs_number": patient[2] if patient else None,
                        "study_uid": uids[0] if len(uids) == 1 else None,
                        "detail": json.dumps(
                            {**(detail or {}), "studies": uids},
                            sort_keys=True,
                            separators=(",", ":"),
                            default=str,
                        ),
                    }
                )
            return out

        return self._append_each(
            lambda conn: records(by_patient_of(conn)), relaxed=base["action"] in READ_ACTIONS
        )

    def record_patients(
        self,
        principal: Principal,
        action: AuditAction | str,
        patients: Iterable[PatientRef],
        *,
        detail: dict[str, Any] | None = None,
    ) -> list[int]:
        """One record per patient a read named (none named: one record without a patient), in
        one transaction, so searching the trail by any of them finds the read."""
        base = audit_fields(principal, action, detail=detail)
        named: list[PatientRef | None] = [*dict.fromkeys(patients)] or [None]
        records = [
            {
                **base,
                "patient_issuer": p.issuer if p else None,
                "patient_id": p.local_id if p else None,
                "nhs_number": p.nhs_number if p else None,
            }
            for p in named
        ]
        return self._append_each(lambda conn: records, relaxed=base["action"] in READ_ACTIONS)

    @staticmethod
    def naming_patient(conn: Connection, fields: dict[str, Any]) -> dict[str, Any]:
        """``fields`` naming the patient of their study when they name a study only."""
        if fields.get("patient_id") is None and fields.get("study_uid"):
            found = store.patient_of_study(conn, fields["study_uid"])
            if found is not None:
                fields = {
                    **fields,
                    "patient_issuer": found[0],
                    "patient_id": found[1],
                    "nhs_number": found[2],
                }
        return fields

    @staticmethod
    def append_in(conn: Connection, fields: dict[str, Any]) -> int:
        """Append inside the caller's write transaction (ingest: audit and index commit as one)."""
        return store.append(conn, AuditTrail.naming_patient(conn, fields))

    @staticmethod
    def append_alone(index: Index, fields: dict[str, Any], *, relaxed: bool) -> int:
        """Append in a transaction of its own, after a read (fields already name the
        patient): on PostgreSQL one round trip that holds the chain's lock for microseconds."""
        return store.append_alone(index, fields, relaxed=relaxed)

    def verify(self) -> store.VerifyReport:
        return store.verify(self._index)

    def seal(self, progress: Any = None) -> store.VerifyReport:
        """Re-chain records written before the audit key under it (once, after upgrading)."""
        return store.seal(self._index, progress=progress)

    def purge(
        self, older_than: str, keep: Callable[[list[dict[str, Any]]], object]
    ) -> store.PurgeReport:
        """Remove records written before ``older_than`` after ``keep`` archived them (R38)."""
        return store.purge(self._index, older_than, keep)

    def search(self, **criteria: Any) -> list[dict[str, Any]]:
        return store.search(self._index, **criteria)

    def iter_records(self, after_seq: int = 0) -> Any:
        return store.iter_records(self._index, after_seq)


def _coalescing_key(
    principal: Principal, action: AuditAction | str, study_uid: str, channel: str
) -> tuple[str, ...]:
    """What makes two accesses "the same" for `AuditTrail.record_coalesced`."""
    return (
        principal.kind.value,
        principal.name,
        principal.trust or "",
        principal.address or "",
        principal.purpose or "",  # a read for an MDT meeting is not "the same" as one without
        AuditAction(action).value,
        study_uid,
        channel,
    )
