"""Outside studies reconciled to a consortium patient before anyone sees them (R28, IHE IRWF.b).

Studies from outside the consortium (an IEP gateway or another organisation's PACS registered
with `solent ae add --outside`, a PDI disc through `solent import --outside`) carry another
organisation's Patient ID, which names nobody here. Ingest holds them (``ingest.held``: the
held-instance mechanism of issue 11, kind ``outside``), filed under no patient: no query,
retrieve, viewer or FHIR answer shows them. This is the one door to decide them, a study at a
time, for identity stewards: a ``pacs_admin`` of the receiving trust, or a regional
administrator (no trust); everyone else gets what an unknown study gets.

* Reconcile: the steward chooses the patient record (an existing record they steward). Each
  held instance is filed through ingest under that record (channel ``reconcile``, audited as a
  DICOM Import, 110107). The stored bytes stay as received; outgoing DICOM carries the record's
  identity with the identifiers the outside sent in Original Attributes Sequence (as after
  any identity change, ``services/outgoing_identity.py``), and the held rows keep them too.
* Reject: the held copies are removed; the rows stay as the record of who, when and why.

Every list, show and decision writes its audit record.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from typing import Any, NoReturn

from sqlalchemy import Connection

from solent.domain.principal import Channel, Principal, Provenance
from solent.errors import InvalidInput, NotFound, SolentError, StorageError
from solent.index import held as held_store
from solent.index import identity as identity_store
from solent.index.held import OUTSIDE
from solent.index.records import AlreadyStoredError, PatientMismatchError, RecordedInstance
from solent.index.sql import Index
from solent.ingest import Ingestor
from solent.services.access import AccessDenied, AccessService, Permission
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail, PatientRef, audit_fields
from solent.services.held import STATUSES, copy_out, remove_copy
from solent.services.identity import IdentityService, PatientKey, Resolved
from solent.storage import BlobStore


class ImportConflict(SolentError):
    """The decision cannot be made as asked; the message says why and what would make it
    possible. Nothing more was changed."""


class OutsideImports:
    def __init__(
        self,
        index: Index,
        store: BlobStore,
        access: AccessService,
        audit: AuditTrail,
        ingest: Ingestor,
        identity: IdentityService,
    ) -> None:
        self._index = index
        self._store = store
        self._access = access
        self._audit = audit
        self._ingest = ingest
        self._identity = identity

    # -- reads -------------------------------------------------------------------------------

    def work_list(
        self, principal: Principal, *, status: str | None = "held"
    ) -> list[dict[str, Any]]:
        """The work list: outside studies the caller stewards, newest first, one entry per
        study and status, with what the outside sent. Each study shown is audited."""
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status is one of {', '.join(STATUSES)}")
        if not self._access.permits(principal, Permission.ADMIN):
            return []
        with self._index.read() as conn:
            rows = held_store.held_rows(conn, status, kind=OUTSIDE)
        rows = [r for r in rows if self._stewards(principal, r["sender_trust"])]
        studies = _by_study(rows)
        for study in studies:
            self._read_audit(principal, study, "outside-imports")
        return studies

    def show(self, principal: Principal, study_uid: str) -> dict[str, Any]:
        """One outside study (every status) with its instances."""
        rows = self._rows(principal, study_uid, status=None)
        (study, *_) = _by_study(rows, with_instances=True)
        self._read_audit(principal, study, "outside-import")
        return study

    # -- decisions ---------------------------------------------------------------------------

    def reconcile(
        self, principal: Principal, study_uid: str, to: PatientKey, reason: str = ""
    ) -> dict[str, Any]:
        """File every held instance of the study under ``to`` (durable before the answer).
        ImportConflict, with nothing changed, when the record does not exist or the study's
        UIDs are already filed under a record that is not the same person."""
        rows = self._rows(principal, study_uid, status="held")
        self._require_steward(principal, to.issuer)
        reason = reason.strip()
        first = rows[0]
        with self._index.read() as conn:
            target = self._identity.resolve(to.issuer, to.local_id, conn=conn)
            why = self._cannot_file(conn, rows, target, to)
        if why or target is None:
            self._refused(principal, first, "reconcile", why)
        where = f"{target.local_id} of {target.issuer}"
        resolution = f"reconciled to {where}" + (f": {reason}" if reason else "")
        filed = already = 0
        for row in rows:
            if self._file(principal, row, target, resolution):
                filed += 1
            else:
                already += 1
        self._index.write(lambda c: self._trail(c, principal, first, target, len(rows), reason))
        return {
            "study_uid": study_uid,
            "status": "released",
            "filed_under": {"issuer": target.issuer, "patient_id": target.local_id},
            "instances": filed,
            "already_stored": already,
        }

    def reject(self, principal: Principal, study_uid: str, reason: str) -> dict[str, Any]:
        """Reject the outside study (a reason is required): its held copies are removed and
        its rows kept as the record of what happened."""
        rows = self._rows(principal, study_uid, status="held")
        reason = reason.strip()
        if not reason:
            raise InvalidInput("give the reason for rejecting the outside study")
        actor = principal.describe()

        def op(conn: Connection) -> None:
            for row in rows:
                if not held_store.settle(conn, int(row["pk"]), "discarded", actor, reason):
                    raise ImportConflict("it was decided meanwhile")  # rolls back the rest
            AuditTrail.append_in(
                conn,
                audit_fields(
                    principal,
                    AuditAction.DELETE,
                    study_uid=study_uid,
                    detail={
                        **_as_sent(rows[0]),
                        "change": "outside study rejected",
                        "instances": len(rows),
                        "reason": reason,
                    },
                ),
            )

        try:
            self._index.write(op)
        except ImportConflict as exc:
            self._refused(principal, rows[0], "reject", str(exc))
        for row in rows:
            remove_copy(self._store, str(row["path"]))
        return {"study_uid": study_uid, "status": "discarded", "instances": len(rows)}

    # -- inside ------------------------------------------------------------------------------

    def _stewards(self, principal: Principal, issuer: str | None) -> bool:
        """An administrator of this trust's records (a regional one, no trust: of all)."""
        if not self._access.permits(principal, Permission.ADMIN):
            return False
        if principal.trust is None:
            return True
        return issuer is not None and issuer in self._access.scope(principal).trusts

    def _require_steward(self, principal: Principal, issuer: str) -> None:
        if not self._stewards(principal, issuer):
            raise AccessDenied(
                f"reconciling to a record of {issuer}: that trust's records are managed by its "
                "administrators or a regional administrator"
            )

    def _rows(
        self, principal: Principal, study_uid: str, *, status: str | None
    ) -> list[dict[str, Any]]:
        """The study's outside rows when the caller stewards them; else what an unknown
        study gets (no held instance of it: decided already, or never sent)."""
        with self._index.read() as conn:
            rows = held_store.held_rows(conn, status, kind=OUTSIDE, study_uid=study_uid)
        if not rows or not all(self._stewards(principal, r["sender_trust"]) for r in rows):
            raise NotFound(f"no outside study {study_uid} waiting for reconciliation")
        return rows

    def _cannot_file(
        self,
        conn: Connection,
        rows: list[dict[str, Any]],
        target: Resolved | None,
        to: PatientKey,
    ) -> str:
        """Why the study cannot be filed under ``target`` ("" when it can): the record must
        exist, and UIDs already filed somewhere must be filed under the same person."""
        if target is None:
            return (
                f"there is no patient record {to.local_id} of {to.issuer}; outside studies are "
                "filed under a record the trust's PAS registered (ADT A04/A28) or a record "
                "already in the archive"
            )
        same = self._identity.linked_patient_pks(target.patient_pk, conn=conn)
        holders: set[int] = set()
        for row in rows:
            holders |= held_store.owners(conn, row["study_uid"], row["series_uid"], row["sop_uid"])
        if holders - same:
            return (
                "its Study, Series or SOP Instance UIDs are already filed under another patient "
                f"record, not linked to {target.local_id} of {target.issuer}; reconcile it to "
                "that patient, or reject it"
            )
        return ""

    def _file(
        self, principal: Principal, row: dict[str, Any], target: Resolved, resolution: str
    ) -> bool:
        """File one held instance under ``target``; False when the archive holds it already
        (the same bytes, under the same person): its row is settled and the copy removed."""
        held_pk = int(row["pk"])
        provenance = Provenance(
            Channel.RECONCILE,
            calling_ae=row["calling_ae"],
            user=principal.name,
            extra={"held": str(held_pk), "sent_by": str(row["sender"]), **_as_sent(row)},
        )

        def within(conn: Connection, recorded: RecordedInstance) -> None:
            same = self._identity.linked_patient_pks(target.patient_pk, conn=conn)
            if recorded.patient_pk not in same:  # a study filed meanwhile under someone else
                raise ImportConflict(
                    f"outside study {row['study_uid']}: filed meanwhile under another record"
                )
            if not held_store.settle(conn, held_pk, "released", principal.describe(), resolution):
                raise ImportConflict(f"outside study {row['study_uid']} was decided meanwhile")

        path = copy_out(self._store, str(row["path"]))
        try:
            result = self._ingest.file_kept(
                path,
                principal,
                provenance,
                file_under=(target.issuer, target.local_id),
                within=within,
                record_says=True,
            )
        except AlreadyStoredError as exc:
            if not exc.identical:
                self._refused(principal, row, "reconcile", _refusal(exc))
            settled = self._index.write(
                lambda c: held_store.settle(
                    c, held_pk, "released", principal.describe(), "already in the archive"
                )
            )
            if not settled:
                self._refused(principal, row, "reconcile", "it was decided meanwhile")
            remove_copy(self._store, str(row["path"]))
            return False
        except PatientMismatchError as exc:
            self._refused(principal, row, "reconcile", _refusal(exc))
        except ImportConflict as exc:
            self._refused(principal, row, "reconcile", str(exc))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if not result.ok:
            raise StorageError(f"outside instance {row['sop_uid']} not filed: {result.message}")
        remove_copy(self._store, str(row["path"]))
        return True

    def _trail(
        self,
        conn: Connection,
        principal: Principal,
        row: dict[str, Any],
        target: Resolved,
        instances: int,
        reason: str,
    ) -> None:
        """The decision in the record's identity history and the audit trail: the outside
        identifiers kept with the record they were reconciled to (IHE IRWF.b)."""
        patient = identity_store.get_patient(conn, target.patient_pk)
        sent = _as_sent(row)
        identity_store.add_event(
            conn,
            kind="outside-study-reconciled",
            actor=principal.describe(),
            patient_pk=target.patient_pk,
            issuer=target.issuer,
            local_id=target.local_id,
            before=sent,
            after={"study_uid": row["study_uid"], "instances": instances, "reason": reason},
        )
        AuditTrail.append_in(
            conn,
            audit_fields(
                principal,
                AuditAction.PATIENT_RECORD,
                patient=PatientRef(
                    target.issuer, target.local_id, patient["nhs_number"] if patient else None
                ),
                study_uid=row["study_uid"],
                detail={**sent, "change": "outside study reconciled", "reason": reason},
            ),
        )

    def _read_audit(self, principal: Principal, study: dict[str, Any], read: str) -> None:
        self._audit.record(
            principal,
            AuditAction.QUERY,
            study_uid=study["study_uid"],
            detail={"read": read, **{f"original_{k}": v for k, v in study["as_sent"].items() if v}},
        )

    def _refused(self, principal: Principal, row: dict[str, Any], what: str, why: str) -> NoReturn:
        """Audit the refused decision (one record) and raise it."""
        self._audit.record(
            principal,
            AuditAction.PATIENT_RECORD if what == "reconcile" else AuditAction.DELETE,
            AuditOutcome.FAILURE,
            study_uid=row["study_uid"],
            detail={**_as_sent(row), "change": f"{what} refused", "reason": why},
        )
        raise ImportConflict(f"outside study {row['study_uid']} cannot be {what}d: {why}")


def _as_sent(row: dict[str, Any]) -> dict[str, str]:
    """The outside identity as the instances carried it."""
    return {
        k: str(row[c])
        for k, c in (
            ("original_patient_id", "patient_id"),
            ("original_issuer", "original_issuer"),
            ("original_name", "patient_name"),
            ("original_birth_date", "patient_birth_date"),
        )
        if row[c]
    }


def _by_study(rows: list[dict[str, Any]], *, with_instances: bool = False) -> list[dict[str, Any]]:
    """Held rows as one entry per (study, status), newest first."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: int(r["pk"]), reverse=True):
        groups[(str(row["study_uid"]), str(row["status"]))].append(row)
    out = []
    for (study_uid, status), members in groups.items():
        first = members[-1]  # the first received
        entry: dict[str, Any] = {
            "study_uid": study_uid,
            "status": status,
            "received_at": _iso(first["at"]),
            "sender": first["sender"],
            "receiving_trust": first["sender_trust"],
            "calling_ae": first["calling_ae"],
            "as_sent": {
                "patient_id": first["patient_id"],
                "issuer": first["original_issuer"],
                "name": first["patient_name"],
                "birth_date": first["patient_birth_date"],
                "sex": first["patient_sex"],
            },
            "study": {
                "date": first["study_date"],
                "description": first["study_description"],
                "accession_number": first["accession_number"],
                "modalities": sorted({str(m["modality"]) for m in members if m["modality"]}),
            },
            "series": len({m["series_uid"] for m in members}),
            "instances": len(members),
            "work_item": first["work_item"],
            "resolved_by": first["resolved_by"],
            "resolved_at": _iso(first["resolved_at"]),
            "resolution": first["resolution"],
        }
        if with_instances:
            entry["instance_list"] = [
                {"series_uid": m["series_uid"], "sop_uid": m["sop_uid"], "status": m["status"]}
                for m in reversed(members)
            ]
        out.append(entry)
    return out


def _refusal(exc: Exception) -> str:
    if isinstance(exc, AlreadyStoredError):
        return "one of its SOP Instance UIDs is stored already with different content; reject it"
    return f"the archive refused to file it: {exc}"


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()
