"""The audit trail as adapters see it (issue 11, "one guarded door").

Adapters write records as the caller (``record``). Reading the trail —
which names patients — is for auditors only, and each read, export or verification writes its
own ``audit-log-used`` / ``export`` record here, so no route or command can read it unrecorded
or forget the check. The internal ``AuditTrail`` (search without a caller) stays with the
services and the composition root.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from solent.domain.principal import Principal, PrincipalKind
from solent.index import audit as store
from solent.services.access import AccessDenied, AccessService, Permission
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail, PatientRef


class AuditDoor:
    def __init__(self, trail: AuditTrail, access: AccessService) -> None:
        self._trail = trail
        self._access = access

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
