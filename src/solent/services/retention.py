"""Records retention (R43, R44): legal holds, and deletions that need a second person.

The one door for both. Only a person holding ``records_manager`` (Permission.RETENTION) may use
it; that role reads no images, reports or clinical data, and no administrator account may hold
it (an administrator makes accounts, so could make its own "second person").

* **Legal holds** name a study, a patient record (issuer, local ID) or a person (NHS number:
  that person's records at every trust); several placed together under one reference are a
  cohort. While a hold is not lifted, a retention deletion withdraws nothing of a study it
  covers: an IOCM note titled 113039 is stored but refused (``solent.ingest.rejection``), and
  a pending deletion cannot be approved. Holds may be placed before the records arrive, and
  placing one tells nothing about whether they exist. Placing and lifting are audited.
* **Retention deletions**: a 113039 note (from a node or a person) is kept as a pending
  deletion of what it lists. A records manager of the record's trust who is not the person who
  sent the note approves it (the withdrawal happens then, ``rejected_instance`` rows being the
  destruction record, and Instance Availability Notification follows the change feed) or
  refuses it (nothing is withdrawn). Each decision, and each refused attempt, is audited.

Other rejection titles (113001, 113037, 113038) are corrections, not deletions: they act at
once, as before, holds or not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection

from solent.dicom.rejection_note import REJECTION_TITLES, RejectionNote
from solent.domain import nhs_number
from solent.domain.principal import Principal, PrincipalKind
from solent.domain.uids import is_valid_uid
from solent.errors import InvalidInput, NotFound, SolentError
from solent.index import retention as store
from solent.index.rejection import apply_rejection
from solent.index.sql import Index
from solent.services.access import AccessDenied, AccessService, Permission
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail, PatientRef, audit_fields

STATUSES = ("pending", "approved", "refused")
_TEXT = re.compile(r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+$")


class RetentionConflict(SolentError):
    """The decision cannot be made now (decided already, or a legal hold covers the study);
    nothing was changed. The message says why."""


def checked_text(value: object, name: str, low: int, high: int) -> str:
    text = str(value or "").strip()
    if not (low <= len(text) <= high) or not _TEXT.match(text):
        raise InvalidInput(f"{name} must be {low} to {high} characters of text")
    return text


def _target(raw: Mapping[str, Any]) -> dict[str, str | None]:
    """One hold target, checked: a study, a patient record, or a person by NHS number."""
    study = raw.get("study_uid")
    issuer, local_id, nhs = raw.get("issuer"), raw.get("patient_id"), raw.get("nhs_number")
    given = [k for k in ("study_uid", "nhs_number") if raw.get(k)]
    if issuer or local_id:
        given.append("patient")
    if len(given) != 1:
        raise InvalidInput(
            "each target names one thing: study_uid, or issuer with patient_id, or nhs_number"
        )
    if study:
        if not is_valid_uid(study):
            raise InvalidInput("study_uid is not a valid UID")
        return {"kind": "study", "study_uid": str(study)}
    if nhs:
        number = nhs_number.normalise(str(nhs))
        if not nhs_number.is_valid(number):
            raise InvalidInput("nhs_number is not a valid NHS number (10 digits, check digit)")
        return {"kind": "nhs", "nhs_number": number}
    return {
        "kind": "patient",
        "issuer": checked_text(issuer, "issuer", 1, 16),
        "patient_id": checked_text(local_id, "patient_id", 1, 64),
    }


def _hold_view(row: Mapping[str, Any]) -> dict[str, Any]:
    target = {
        "study": {"study_uid": row["study_uid"]},
        "patient": {"issuer": row["issuer"], "patient_id": row["patient_id"]},
        "nhs": {"nhs_number": row["nhs_number"]},
    }[str(row["kind"])]
    return {
        "id": int(row["pk"]),
        "kind": row["kind"],
        **target,
        "reason": row["reason"],
        "reference": row["reference"],
        "placed_by": row["placed_by"],
        "placed_trust": row["placed_trust"],
        "placed_at": row["placed_at"],
        "active": row["lifted_at"] is None,
        "lifted_by": row["lifted_by"],
        "lifted_at": row["lifted_at"],
        "lift_reason": row["lift_reason"],
    }


def _hold_patient(target: Mapping[str, Any]) -> PatientRef | None:
    if target.get("kind") == "patient":
        return PatientRef(str(target["issuer"]), str(target["patient_id"]))
    return None


def deletion_view(row: Mapping[str, Any]) -> dict[str, Any]:
    refs = json.loads(row["refs"])
    series: dict[str, list[str]] = {}
    for series_uid, sop in refs:
        series.setdefault(series_uid, []).append(sop)
    return {
        "id": int(row["pk"]),
        "status": row["status"],
        "code": row["code"],
        "reason": REJECTION_TITLES.get(str(row["code"]), row["code"]),
        "note_uid": row["note_uid"],
        "study_uid": row["study_uid"],
        "patient": {"issuer": row["patient_issuer"], "patient_id": row["patient_id"]},
        "instances": len(refs),
        "series": series,
        "requested_by": row["requested_by"],
        "requested_at": row["requested_at"],
        "decided_by": row["decided_by"],
        "decided_at": row["decided_at"],
        "decision_note": row["decision_note"],
        "outcome": json.loads(row["outcome"]) if row["outcome"] else None,
    }


class RetentionService:
    def __init__(self, index: Index, access: AccessService, audit: AuditTrail) -> None:
        self._index = index
        self._access = access
        self._audit = audit

    def _person(self, principal: Principal, what: str) -> None:
        """Records managers only, and people only (a decision has a name on it)."""
        self._access.require(principal, Permission.RETENTION, what)
        if principal.kind is not PrincipalKind.USER:
            raise AccessDenied(f"{what} is for a person with the records_manager role")

    def _trusts(self, principal: Principal) -> frozenset[str] | None:
        scope = self._access.scope(principal)
        return None if scope.unrestricted else scope.trusts

    # -- legal holds (R43) -------------------------------------------------------------------

    def place_holds(
        self,
        principal: Principal,
        *,
        reason: str,
        reference: str,
        targets: Sequence[Mapping[str, Any]],
    ) -> list[dict[str, Any]]:
        """Place one hold per target (several: a cohort) under one reason and reference."""
        self._person(principal, "placing a legal hold")
        why = checked_text(reason, "reason", 3, 2000)
        ref = checked_text(reference, "reference", 1, 200)
        if not targets or len(targets) > 1000:
            raise InvalidInput("name 1 to 1000 targets")
        checked = [_target(t) for t in targets]

        def op(conn: Connection) -> list[dict[str, Any]]:
            out = []
            for target in checked:
                pk = store.add_hold(conn, target, why, ref, principal.describe(), principal.trust)
                AuditTrail.append_in(
                    conn,
                    audit_fields(
                        principal,
                        AuditAction.PATIENT_RECORD,
                        patient=_hold_patient(target),
                        study_uid=target.get("study_uid"),
                        detail={
                            "legal_hold": pk,
                            "placed": target,
                            "reason": why,
                            "reference": ref,
                        },
                    ),
                )
                out.append(_hold_view(store.hold_rows(conn, active_only=False, pk=pk)[0]))
            return out

        return self._index.write(op)

    def holds(self, principal: Principal, *, active_only: bool = True) -> list[dict[str, Any]]:
        """Holds placed at the caller's trusts or on their patient records, newest first."""
        self._person(principal, "listing legal holds")
        with self._index.read() as conn:
            rows = store.hold_rows(conn, active_only=active_only, trusts=self._trusts(principal))
        self._audit.record(
            principal,
            AuditAction.QUERY,
            detail={"read": "legal-holds", "active_only": active_only, "count": len(rows)},
        )
        return [_hold_view(r) for r in rows]

    def lift_hold(self, principal: Principal, hold_id: int, reason: str) -> dict[str, Any]:
        self._person(principal, "lifting a legal hold")
        why = checked_text(reason, "reason", 3, 2000)

        trusts = self._trusts(principal)

        def op(conn: Connection) -> dict[str, Any]:
            rows = store.hold_rows(conn, active_only=False, pk=hold_id, trusts=trusts)
            if not rows:  # unknown, or another trust's: the same answer
                raise NotFound(f"no legal hold {hold_id} of your trusts")
            if trusts is not None and rows[0]["placed_trust"] not in trusts:
                # Another trust's inquiry holds this trust's records: it alone lifts it.
                raise AccessDenied(
                    f"legal hold {hold_id} was placed at trust {rows[0]['placed_trust']}; "
                    "only its records managers may lift it"
                )
            if not store.lift_hold(conn, hold_id, principal.describe(), why):
                raise RetentionConflict(f"legal hold {hold_id} is lifted already")
            row = rows[0]
            target = {k: row[k] for k in ("kind", "study_uid", "issuer", "patient_id")}
            AuditTrail.append_in(
                conn,
                audit_fields(
                    principal,
                    AuditAction.PATIENT_RECORD,
                    patient=_hold_patient(target),
                    study_uid=row["study_uid"],
                    detail={
                        "legal_hold": hold_id,
                        "lifted": True,
                        "reason": why,
                        "reference": row["reference"],
                    },
                ),
            )
            return _hold_view(store.hold_rows(conn, active_only=False, pk=hold_id)[0])

        return self._index.write(op)

    # -- retention deletions (R44) -----------------------------------------------------------

    def deletions(
        self, principal: Principal, *, status: str | None = "pending"
    ) -> list[dict[str, Any]]:
        """Retention deletions of the caller's trusts' records, newest first; each one shown
        is audited naming its patient."""
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status is one of {', '.join(STATUSES)}")
        self._person(principal, "listing retention deletions")
        with self._index.read() as conn:
            rows = store.deletion_rows(conn, status=status, trusts=self._trusts(principal))
        for row in rows:
            self._audit.record(
                principal,
                AuditAction.QUERY,
                patient=PatientRef(row["patient_issuer"], row["patient_id"]),
                study_uid=row["study_uid"],
                detail={"read": "retention-deletions", "retention_deletion": row["pk"]},
            )
        return [deletion_view(r) for r in rows]

    def _pending(self, conn: Connection, principal: Principal, pk: int) -> dict[str, Any]:
        rows = store.deletion_rows(conn, status=None, trusts=self._trusts(principal), pk=pk)
        if not rows:  # unknown, or another trust's: the same answer
            raise NotFound(f"no retention deletion {pk} of your trusts' records")
        row = rows[0]
        if row["status"] != "pending":
            raise RetentionConflict(f"retention deletion {pk} is {row['status']} already")
        return row

    def _refused_attempt(
        self, principal: Principal, row: Mapping[str, Any], why: str, detail: dict[str, Any]
    ) -> None:
        self._audit.record(
            principal,
            AuditAction.DELETE,
            AuditOutcome.DENIED,
            patient=PatientRef(row["patient_issuer"], row["patient_id"]),
            study_uid=row["study_uid"],
            detail={"retention_deletion": row["pk"], "approval_refused": why, **detail},
        )

    def approve(self, principal: Principal, pk: int, note: str = "") -> dict[str, Any]:
        """Withdraw what a pending deletion lists: by a second person, and only while no legal
        hold covers the study (checked in the withdrawing transaction)."""
        self._person(principal, "approving a retention deletion")
        comment = checked_text(note, "note", 1, 2000) if note.strip() else ""
        with self._index.read() as conn:
            row = self._pending(conn, principal, pk)
        if row["requester_user"] is not None and row["requester_user"] == principal.name:
            why = "the person who requested a retention deletion cannot also approve it"
            self._refused_attempt(principal, row, why, {})
            raise AccessDenied(f"{why}: a second records manager must approve deletion {pk}")
        refused: list[dict[str, Any]] = []

        def op(conn: Connection) -> dict[str, Any]:
            current = self._pending(conn, principal, pk)
            owner = store.study_owner(conn, str(current["study_uid"]))
            holds = store.holds_covering(conn, owner) if owner is not None else []
            if holds:
                refused.extend(holds)
                raise RetentionConflict(
                    f"retention deletion {pk} cannot be approved: the study is under legal "
                    f"hold ({', '.join(str(h['id']) for h in holds)}); it stays pending"
                )
            if not store.decide_deletion(conn, pk, "approved", principal.describe(), comment, None):
                raise RetentionConflict(f"retention deletion {pk} was decided meanwhile")
            study_uid = str(current["study_uid"])
            rejection = RejectionNote(
                str(current["code"]),
                REJECTION_TITLES.get(str(current["code"]), str(current["code"])),
                tuple((study_uid, se, sop) for se, sop in json.loads(current["refs"])),
            )
            by = f"{current['requested_by']}; approved by {principal.describe()}"
            done = apply_rejection(conn, rejection, str(current["note_uid"]), study_uid, by)
            store.record_outcome(conn, pk, {"rejected": done.series, "not_found": done.not_found})
            AuditTrail.append_in(
                conn,
                audit_fields(
                    principal,
                    AuditAction.DELETE,
                    patient=PatientRef(current["patient_issuer"], current["patient_id"]),
                    study_uid=study_uid,
                    detail={
                        "iocm": rejection.code,
                        "reason": rejection.meaning,
                        "note": current["note_uid"],
                        "retention_deletion": pk,
                        "requested_by": current["requested_by"],
                        "approved_by": principal.describe(),
                        "rejected": done.series,
                        "not_found": done.not_found,
                        "key_images_flagged": done.key_images,
                        "key_objects_flagged": done.key_objects,
                    },
                ),
            )
            return deletion_view(store.deletion_rows(conn, status=None, trusts=None, pk=pk)[0])

        try:
            return self._index.write(op)
        except RetentionConflict:
            if refused:
                self._refused_attempt(principal, row, "legal hold", {"legal_hold": refused})
            raise

    def refuse(self, principal: Principal, pk: int, reason: str) -> dict[str, Any]:
        """Discard a pending deletion: nothing is withdrawn; the note stays stored."""
        self._person(principal, "refusing a retention deletion")
        why = checked_text(reason, "reason", 3, 2000)

        def op(conn: Connection) -> dict[str, Any]:
            current = self._pending(conn, principal, pk)
            if not store.decide_deletion(conn, pk, "refused", principal.describe(), why, None):
                raise RetentionConflict(f"retention deletion {pk} was decided meanwhile")
            AuditTrail.append_in(
                conn,
                audit_fields(
                    principal,
                    AuditAction.DELETE,
                    AuditOutcome.DENIED,
                    patient=PatientRef(current["patient_issuer"], current["patient_id"]),
                    study_uid=current["study_uid"],
                    detail={
                        "iocm": current["code"],
                        "note": current["note_uid"],
                        "retention_deletion": pk,
                        "requested_by": current["requested_by"],
                        "refused_by": principal.describe(),
                        "reason": why,
                        "rejected": {},
                    },
                ),
            )
            return deletion_view(store.deletion_rows(conn, status=None, trusts=None, pk=pk)[0])

        return self._index.write(op)
