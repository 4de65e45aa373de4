"""The primary reporter's notices (R32): discrepancies an MDT flagged with their reports, to
read and acknowledge. Recorded by services/mdt_outcomes.py; read here by the addressee only.

A notice is addressed to the user whose name is the report's OBR-32 ID at the reporting trust,
or, when the report named no ID, to that trust's radiologists. The addressee sees it while they
may see its study; a notice not addressed to the caller answers like one that does not exist.
Every read and acknowledgement is audited naming the study's patient.
"""

from __future__ import annotations

from typing import Any

from solent.domain.principal import Principal
from solent.errors import InvalidInput, NotFound
from solent.index import mdt_outcomes as store
from solent.index.sql import Index
from solent.services.access import AccessService, Permission, Role
from solent.services.audit import AuditAction, AuditTrail, PatientRef, audit_fields
from solent.services.viewer import iso

MAX_RESPONSE = 10_000
NO_NOTICE = "no such notice"


class ReporterNoticeService:
    def __init__(self, index: Index, access: AccessService, audit: AuditTrail) -> None:
        self._index = index
        self._access = access
        self._audit = audit

    def notices(self, principal: Principal, *, status: str | None = "open") -> dict[str, Any]:
        """Discrepancy notices addressed to the caller (their user name is the report's OBR-32
        ID) at their trusts, and, for a radiologist, those of their trusts' reports that named
        no reporter ID. Only notices on studies the caller may still see; one ``view`` audit
        record per notice listed (a ``query`` when none)."""
        self._access.require(principal, Permission.READ, "reading discrepancy notices")
        if status not in (None, "open", "acknowledged"):
            raise InvalidInput("status is open or acknowledged")
        rows = self._addressed(principal, status)
        visible = self._access.visible_study_uids(principal, {r["study_uid"] for r in rows})
        out = []
        for r in rows:
            if r["study_uid"] not in visible:
                continue
            patient = self._access.check_study(principal, r["study_uid"])
            self._audit.record(
                principal,
                AuditAction.VIEW,
                patient=patient,
                study_uid=r["study_uid"],
                detail={"api": "discrepancy notices", "notice": int(r["pk"])},
            )
            out.append(_notice_json(r, patient))
        if not out:
            self._audit.record(
                principal, AuditAction.QUERY, detail={"api": "discrepancy notices", "results": 0}
            )
        return {"notices": out}

    def _addressed(self, principal: Principal, status: str | None) -> list[dict[str, Any]]:
        scope = self._access.scope(principal)
        if scope.unrestricted or not scope.trusts:
            return []  # notices are for people at a trust, not for the server or a region
        team = Role.RADIOLOGIST.value in principal.roles
        with self._index.read() as conn:
            return store.notices_for(conn, scope.trusts, principal.name, team=team, status=status)

    def acknowledge(self, principal: Principal, notice_id: int, response: str) -> dict[str, Any]:
        """The addressee closes a notice with their response (an addendum issued, no change
        needed...). NotFound for a notice not addressed to the caller, like an unknown one."""
        self._access.require(principal, Permission.READ, "acknowledging discrepancy notices")
        if len(response) > MAX_RESPONSE:
            raise InvalidInput(f"the response is longer than {MAX_RESPONSE} characters")
        mine = {int(r["pk"]): r for r in self._addressed(principal, None)}
        row = mine.get(notice_id)
        if row is None or not self._access.visible_study_uids(principal, {row["study_uid"]}):
            raise NotFound(NO_NOTICE)
        patient = self._access.check_study(principal, row["study_uid"])

        def op(conn: Any) -> bool:
            if not store.acknowledge(conn, notice_id, principal.name, response):
                return False
            AuditTrail.append_in(
                conn,
                audit_fields(
                    principal,
                    AuditAction.PATIENT_RECORD,
                    patient=patient,
                    study_uid=row["study_uid"],
                    detail={"mdt": "discrepancy notice acknowledged", "notice": notice_id},
                ),
            )
            return True

        if not self._index.write(op):
            raise InvalidInput(f"notice {notice_id} was acknowledged already")
        with self._index.read() as conn:
            fresh = store.get_notice(conn, notice_id)
        assert fresh is not None
        return _notice_json(fresh, patient)


def _notice_json(row: dict[str, Any], patient: PatientRef) -> dict[str, Any]:
    return {
        "id": int(row["pk"]),
        "status": row["status"],
        "trust": row["trust"],
        "reporter_id": row["reporter_id"],
        "reporter": row["reporter_name"],
        "study_uid": row["study_uid"],
        "accession": row["accession_number"],
        "report_version": int(row["report_version"]),
        "patient": {"issuer": patient.issuer, "patient_id": patient.local_id},
        "meeting_id": int(row["meeting_pk"]),
        "item_id": int(row["item_pk"]),
        "opinion": row["opinion"],
        "plan": row["plan"],
        "discrepancy_note": row["discrepancy_note"],
        "flagged_by": row["recorded_by"],
        "flagged_trust": row["recorded_trust"],
        "flagged_at": iso(row["recorded_at"]),
        "acknowledged_by": row["acknowledged_by"],
        "acknowledged_at": iso(row["acknowledged_at"]) if row["acknowledged_at"] else None,
        "response": row["response"],
    }
