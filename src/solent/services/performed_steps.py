"""Modality Performed Procedure Steps (MPPS, PS3.4 Annex F; R17): a modality reports that it
started a procedure (N-CREATE, IN PROGRESS) and how it ended (N-SET, COMPLETED or
DISCONTINUED). The steps are kept per trust, the orders they performed leave the worklist
(STARTED) and end COMPLETED or DISCONTINUED, and every report is audited.

A step belongs to the trust of the node that created it: only a node of that trust may update
it, and to any other caller it does not exist. The DIMSE N-CREATE/N-SET are the adapter's
(``protocols/dimse/mpps_scp.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from solent.domain.principal import Principal
from solent.domain.uids import uid_problem
from solent.errors import AlreadyExists, InvalidInput, NotFound
from solent.index import performed_steps as store
from solent.index.sql import Index
from solent.services.access import AccessService, Permission
from solent.services.audit import AuditAction, AuditTrail, PatientRef, audit_fields

STATUSES = frozenset({store.IN_PROGRESS, *store.FINAL})
#: Widths of the step's columns (the attributes' VR lengths). A longer value from a modality is
#: cut to fit, on N-CREATE and N-SET alike: PostgreSQL refuses an over-long value outright.
_WIDTH = {
    "patient_id": 64,
    "study_uid": 64,
    "accession_number": 16,
    "modality": 16,
    "performed_step_id": 16,
    "description": 64,
}


def _fit(column: str, value: str) -> str | None:
    return value[: _WIDTH[column]] or None


def _check_identifiers(report: StepReport) -> None:
    """The studies a step names must be UIDs and its patient ID fit LO: cut to fit, either
    would name another study or patient (and on PostgreSQL an over-long one failed the audit
    record: 0110 instead of 0106)."""
    for study in {report.study_uid, *(s for _, s in report.scheduled)} - {""}:
        problem = uid_problem(study)
        if problem is not None:
            raise InvalidInput(f"a Study Instance UID is not a valid UID: {problem}")
    if len(report.patient_id) > _WIDTH["patient_id"]:
        raise InvalidInput("Patient ID is longer than 64 characters")


class InvalidInstance(InvalidInput):
    """The MPPS SOP Instance UID the modality assigned is no UID (PS3.4: 0117)."""


class StepFinal(InvalidInput):
    """The step is COMPLETED or DISCONTINUED: PS3.4 F.7.2.2 allows no further N-SET."""


@dataclass(frozen=True, slots=True)
class StepReport:
    """What a modality sent, read from its data set by the adapter."""

    status: str  # Performed Procedure Step Status, "" when the N-SET leaves it unchanged
    patient_id: str
    study_uid: str
    accession_number: str
    modality: str
    performed_step_id: str
    description: str
    #: (accession number, study UID) of each Scheduled Step Attributes Sequence item.
    scheduled: tuple[tuple[str, str], ...]
    #: The attributes as DICOM JSON (PS3.18 F.2), merged into the stored step on N-SET.
    attributes: dict[str, Any]


class PerformedStepService:
    def __init__(self, index: Index, access: AccessService, audit: AuditTrail) -> None:
        self._index = index
        self._access = access
        self._audit = audit

    def _require(self, principal: Principal) -> str:
        self._access.require(principal, Permission.STORE, "report performed procedure steps")
        if not principal.trust:
            raise InvalidInput("a performed procedure step needs a caller of a trust")
        return principal.trust

    def create(self, principal: Principal, sop_uid: str, report: StepReport) -> None:
        """N-CREATE: a step starts IN PROGRESS (PS3.4 F.7.2.1)."""
        trust = self._require(principal)
        problem = uid_problem(sop_uid)
        if problem is not None:  # kept, it would be a step no N-SET can name
            raise InvalidInstance(f"the MPPS SOP Instance UID is not a valid UID: {problem}")
        _check_identifiers(report)
        if report.status != store.IN_PROGRESS:
            raise InvalidInput(
                f"a performed procedure step is created IN PROGRESS, not {report.status!r}"
            )

        def op(conn: Connection) -> None:
            if store.get_step(conn, sop_uid) is not None:
                raise AlreadyExists(f"performed procedure step {sop_uid} exists already")
            store.insert_step(
                conn,
                {
                    "sop_instance_uid": sop_uid,
                    "status": report.status,
                    "trust_code": trust,
                    "calling_ae": principal.name[:16],
                    "patient_id": _fit("patient_id", report.patient_id),
                    "study_uid": _fit("study_uid", report.study_uid),
                    "accession_number": _fit("accession_number", report.accession_number),
                    "modality": _fit("modality", report.modality),
                    "performed_step_id": _fit("performed_step_id", report.performed_step_id),
                    "description": _fit("description", report.description),
                    "dataset": json.dumps(report.attributes, separators=(",", ":")),
                },
            )
            self._progress(conn, principal, trust, sop_uid, report, report.status)

        self._index.write(op)

    def update(self, principal: Principal, sop_uid: str, report: StepReport) -> str:
        """N-SET: more attributes, and perhaps the final status; the status after it."""
        trust = self._require(principal)
        _check_identifiers(report)
        if report.status and report.status not in STATUSES:
            raise InvalidInput(f"performed procedure step status {report.status!r} is not one of "
                               "IN PROGRESS, COMPLETED, DISCONTINUED")  # fmt: skip

        def op(conn: Connection) -> str:
            step = store.get_step(conn, sop_uid)
            if step is None or step["trust_code"] != trust:
                raise NotFound(f"no performed procedure step {sop_uid}")
            if step["status"] in store.FINAL:
                raise StepFinal(f"step {step['status']}: may no longer be updated")
            merged = {**json.loads(step["dataset"]), **report.attributes}
            status = report.status or str(step["status"])
            changes: dict[str, Any] = {"status": status, "dataset": json.dumps(merged)}
            for column, value in (
                ("study_uid", report.study_uid),
                ("accession_number", report.accession_number),
                ("performed_step_id", report.performed_step_id),
                ("description", report.description),
            ):
                if value:
                    changes[column] = _fit(column, value)
            store.update_step(conn, sop_uid, changes)
            scheduled = report.scheduled or (
                (step["accession_number"] or "", step["study_uid"] or ""),
            )
            full = StepReport(
                status, report.patient_id or str(step["patient_id"] or ""),
                report.study_uid or str(step["study_uid"] or ""), report.accession_number,
                report.modality, report.performed_step_id, report.description, scheduled, {},
            )  # fmt: skip
            self._progress(conn, principal, trust, sop_uid, full, status)
            return status

        result: str = self._index.write(op)
        return result

    def _progress(
        self,
        conn: Connection,
        principal: Principal,
        trust: str,
        sop_uid: str,
        report: StepReport,
        status: str,
    ) -> None:
        """The orders the step performed follow its status; one audit record per report."""
        orders = store.mark_orders(conn, trust, report.scheduled, store.ORDER_STATUS[status])
        self._audit.append_in(
            conn,
            audit_fields(
                principal,
                AuditAction.ORDER_RECORD,
                patient=PatientRef(trust, report.patient_id) if report.patient_id else None,
                study_uid=report.study_uid or None,
                detail={"mpps": sop_uid, "status": status, "orders": orders},
            ),
        )

    def steps(self, principal: Principal, study_uid: str | None = None) -> list[dict[str, Any]]:
        """The steps of the caller's trust (every trust for a caller without one, such as the
        operator), newest first, for `solent worklist steps`.

        Each says how complete its study is here: ``performed_instances`` (what the modality
        listed in Performed Series Sequence), ``received_instances`` (how many of those the
        archive holds) and ``missing`` (the others' SOP Instance UIDs) — a COMPLETED step with
        instances missing is a transfer that failed or is still queued at the modality."""
        self._access.require(principal, Permission.READ, "list performed procedure steps")
        with self._index.read() as conn:
            rows = store.steps_for(conn, principal.trust, study_uid)
            out = []
            for r in rows:
                performed = performed_instances(json.loads(r["dataset"]))
                held = store.held_instances(conn, performed)
                out.append(
                    {
                        **{k: v for k, v in r.items() if k != "dataset"},
                        "performed_instances": len(performed),
                        "received_instances": len(held),
                        "missing": [u for u in performed if u not in held],
                    }
                )
        return out


def performed_instances(dataset: dict[str, Any]) -> list[str]:
    """SOP Instance UIDs a step's Performed Series Sequence (0040,0340) lists: Referenced Image
    Sequence (0008,1140) and Referenced Non-Image Composite SOP Instance Sequence (0040,0220),
    from its DICOM JSON (PS3.18 F.2), in order, each once."""
    found: dict[str, None] = {}
    for series in _items(dataset, "00400340"):
        for key in ("00081140", "00400220"):
            for ref in _items(series, key):
                value = (ref.get("00081155") or {}).get("Value") or []
                if value and isinstance(value[0], str):
                    found.setdefault(value[0])
    return list(found)


def _items(element: Any, tag: str) -> list[dict[str, Any]]:
    value = (element.get(tag) or {}).get("Value") if isinstance(element, dict) else None
    return [v for v in value or [] if isinstance(v, dict)]
