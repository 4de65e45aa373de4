"""The audit trail as adapters see it (issue 11, "one guarded door").

Adapters write records as the caller (``record``). Reading the trail —
which names patients — is for auditors only, and each read, export or verification writes its
own ``audit-log-used`` / ``export`` record here, so no route or command can read it unrecorded
or forget the check. The internal ``AuditTrail`` (search without a caller) stays with the
services and the composition root.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from solent.domain.principal import Principal, PrincipalKind
from solent.errors import ConfigurationError
from solent.index import audit as store
from solent.services.access import AccessDenied, AccessService, Permission
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail, PatientRef, utc_stamp


class AuditDoor:
    def __init__(
        self, trail: AuditTrail, access: AccessService, *, retention_years: int = 0
    ) -> None:
        self._trail = trail
        self._access = access
        #: R38: years the consortium's Information Governance keeps audit records; 0: for as
        #: long as the archive (nothing is ever purged).
        self.retention_years = retention_years

    # -- writing: every record names its caller ----------------------------------------------

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
        return self._trail.record(
            principal,
            action,
            outcome,
            patient=patient,
            study_uid=study_uid,
            purpose=purpose,
            detail=detail,
        )

    # -- reading: auditors only, each read audited ------------------------------------------

    def search(
        self, principal: Principal, *, after_seq: int = 0, limit: int = 100, **criteria: Any
    ) -> list[dict[str, Any]]:
        """Records matching ``criteria`` (patient, user, study, action, time), oldest first;
        an auditor of a trust reads only that trust's part (``AccessService.audited_trusts``,
        ``index.audit.trust_auditable``), filtered in the query so ``limit`` counts it."""
        self._access.require(principal, Permission.AUDIT, "reading the audit trail")
        trusts = self._access.audited_trusts(principal)
        rows = self._trail.search(**criteria, after_seq=after_seq, limit=limit, trusts=trusts)
        self._trail.record(
            principal,
            AuditAction.AUDIT_LOG_USED,
            detail={k: v for k, v in criteria.items() if v} | {"results": len(rows)},
        )
        return rows

    def export(
        self, principal: Principal, *, after_seq: int = 0, **detail: Any
    ) -> list[dict[str, Any]]:
        """Every record after ``after_seq`` for an export (ATNA syslog, DICOM, FHIR)."""
        self._access.require(principal, Permission.AUDIT, "exporting the audit trail")
        records = list(self._trail.iter_records(after_seq))
        self._trail.record(
            principal,
            AuditAction.EXPORT,
            detail={**detail, "after": after_seq, "records": len(records)},
        )
        return records

    def verify(self, principal: Principal) -> store.VerifyReport:
        self._access.require(principal, Permission.AUDIT, "verifying the audit trail")
        report = self._trail.verify()
        self._trail.record(principal, AuditAction.AUDIT_LOG_USED, detail={"verify": report.intact})
        return report

    def seal(
        self, principal: Principal, progress: Callable[[int], object] | None = None
    ) -> store.VerifyReport:
        """Re-chain an unkeyed trail under the key: the operator's decision (CLI) only."""
        if principal.kind is not PrincipalKind.SYSTEM:
            raise AccessDenied(
                "sealing the audit trail is the operator's decision: run `solent audit seal` "
                "on the server"
            )
        report = self._trail.seal(progress=progress)
        if report.intact:
            self._trail.record(
                principal,
                AuditAction.AUDIT_LOG_USED,
                detail={"sealed": report.records, "unkeyed_before": report.unkeyed},
            )
        return report

    def purge(
        self,
        principal: Principal,
        keep: Callable[[list[dict[str, Any]]], object],
        *,
        now: datetime | None = None,
    ) -> store.PurgeReport:
        """Remove the records older than the retention period Information Governance set
        (R38), each batch handed to ``keep`` (the archive) first; the chain stays provable
        from a checkpoint sealed under the audit key. The operator's decision (CLI) only, and
        only when a period is configured; the purge itself is audited."""
        if principal.kind is not PrincipalKind.SYSTEM:
            raise AccessDenied(
                "purging the audit trail is the operator's decision: run `solent audit purge` "
                "on the server"
            )
        if self.retention_years <= 0:
            raise ConfigurationError(
                "no audit retention period is set: audit records are kept as long as the "
                "archive; set SOLENT_AUDIT_RETENTION_YEARS to the period your Information "
                "Governance documents"
            )
        at = (now or datetime.now(UTC)).astimezone(UTC)
        try:
            cutoff = at.replace(year=at.year - self.retention_years)
        except ValueError:  # 29 February: the day before 1 March (keeps one day longer)
            cutoff = at.replace(year=at.year - self.retention_years, month=2, day=28)
        older_than = utc_stamp(cutoff)
        report = self._trail.purge(older_than, keep)
        self._trail.record(
            principal,
            AuditAction.AUDIT_LOG_USED,
            AuditOutcome.SUCCESS if not report.problems else AuditOutcome.FAILURE,
            detail={
                "purged": report.purged,
                "older_than": older_than,
                "retention_years": self.retention_years,
                "checkpoint_seq": report.through_seq,
                "checkpoint_hash": report.checkpoint,
                "problems": report.problems,
            },
        )
        return report
