"""Instances held for identity reconciliation, decided by a person (issue 11).

Ingest holds an instance naming a study, series or SOP Instance UID already filed under a
patient record the sender may not see (``solent.ingest.held``). This is the one door to
decide it: regional identity administrators only (an administrator of no trust; the item
names records of two trusts), everyone else gets the answer an unknown id gets. Release files
the kept copy through ingest, only when its UIDs now belong to the same person as the record
it names (linked or merged since, or the holder corrected), and checks that again inside the
filing transaction: never images under the wrong patient. Discard keeps the row as the record
of what happened and removes the copy. Each decision writes one audit record.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import Connection

from solent.domain.principal import Channel, Principal, Provenance
from solent.errors import InvalidInput, NotFound, SolentError, StorageError
from solent.index import held as held_store
from solent.index import identity as identity_store
from solent.index.records import AlreadyStoredError, PatientMismatchError, RecordedInstance
from solent.index.sql import Index
from solent.ingest import Ingestor
from solent.services.access import AccessService, Permission
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail, PatientRef, audit_fields
from solent.services.identity import IdentityService
from solent.storage import BlobStore

STATUSES = ("held", "released", "discarded")


class HeldConflict(SolentError):
    """The decision cannot be made as asked (still conflicting, or decided already); nothing
    was changed. The message says why and what would make it possible."""


class HeldService:
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

    def list(self, principal: Principal, *, status: str | None = "held") -> list[dict[str, Any]]:
        """Held instances (newest first). Anyone but a regional identity administrator sees
        none, as if nothing were held; each one shown is audited naming its patient."""
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status is one of {', '.join(STATUSES)}")
        if not self._regional(principal):
            return []
        with self._index.read() as conn:
            rows = held_store.held_rows(conn, status)
            out = [self._view(conn, row) for row in rows]
        for row in rows:
            self._audit.record(
                principal,
                AuditAction.QUERY,
                patient=_named(row),
                study_uid=row["study_uid"],
                detail={"read": "held-instances", "held": row["pk"]},
            )
        return out

    def show(self, principal: Principal, held_pk: int) -> dict[str, Any]:
        """What the sender sent, why it is held, the record that holds its UIDs (identifiers
        only: an administrator reads no clinical data) and whether it could be released now."""
        with self._index.read() as conn:
            row = self._find(principal, conn, held_pk)
            view = self._view(conn, row)
        self._audit.record(
            principal,
            AuditAction.QUERY,
            patient=_named(row),
            study_uid=row["study_uid"],
            detail={"read": "held-instance", "held": held_pk},
        )
        return view

    # -- decisions ---------------------------------------------------------------------------

    def release(self, principal: Principal, held_pk: int) -> dict[str, Any]:
        """File the kept copy through ingest (durable before the answer) and mark the row
        released; HeldConflict, with nothing changed, while it still conflicts."""
        with self._index.read() as conn:
            row = self._find(principal, conn, held_pk)
            decided = _decided(row)
            target, why = (None, decided) if decided else self._target(conn, row)
        if target is None:
            self._refused(principal, row, "release", why)
        path = self._copy_out(row)
        where = f"{target[1]}/{target[0]}"
        provenance = Provenance(
            Channel.RELEASE,
            calling_ae=row["calling_ae"],
            user=principal.name,
            extra={"held": str(held_pk), "sent_by": str(row["sender"])},
        )

        def within(conn: Connection, recorded: RecordedInstance) -> None:
            # Again inside the filing transaction: a link undone meanwhile refuses it here.
            named = self._identity.resolve(row["patient_issuer"], row["patient_id"], conn=conn)
            same = (
                self._identity.linked_patient_pks(named.patient_pk, conn=conn) | {named.patient_pk}
                if named is not None
                else set()
            )
            if recorded.patient_pk not in same:
                raise HeldConflict(
                    f"held instance {held_pk}: the record it would be filed under is no longer "
                    f"linked to {_key(row)}; nothing changed"
                )
            if not held_store.settle(
                conn, held_pk, "released", principal.describe(), f"filed under {where}"
            ):
                raise HeldConflict(f"held instance {held_pk} was decided meanwhile")

        try:
            result = self._ingest.file_kept(
                path, principal, provenance, file_under=target, within=within
            )
        except (AlreadyStoredError, PatientMismatchError) as exc:
            with self._index.read() as conn:
                now_decided = _decided(held_store.held_row(conn, held_pk) or row)
            self._refused(principal, row, "release", now_decided or _refusal(exc))
        except HeldConflict as exc:
            self._refused(principal, row, "release", str(exc))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if not result.ok:
            raise StorageError(f"held instance {held_pk} could not be filed: {result.message}")
        self._remove_copy(row)
        return {
            "id": held_pk,
            "status": "released",
            "filed_under": {"issuer": target[0], "patient_id": target[1]},
            "sop_uid": row["sop_uid"],
        }

    def discard(self, principal: Principal, held_pk: int, reason: str) -> dict[str, Any]:
        """Mark the instance discarded (the reason is required), resolve its work item and
        remove the kept copy; the row stays as the record of what happened."""
        reason = reason.strip()
        with self._index.read() as conn:
            row = self._find(principal, conn, held_pk)
        if not reason:
            raise InvalidInput("give the reason for discarding the held instance")
        decided = _decided(row)
        if decided:
            self._refused(principal, row, "discard", decided)

        def op(conn: Connection) -> bool:
            if not held_store.settle(conn, held_pk, "discarded", principal.describe(), reason):
                return False
            AuditTrail.append_in(
                conn,
                audit_fields(
                    principal,
                    AuditAction.DELETE,
                    patient=_named(row),
                    study_uid=row["study_uid"],
                    detail={**_about(row), "change": "discarded", "reason": reason},
                ),
            )
            return True

        if not self._index.write(op):
            self._refused(
                principal, row, "discard", f"held instance {held_pk} was decided meanwhile"
            )
        self._remove_copy(row)
        return {"id": held_pk, "status": "discarded", "reason": reason}

    # -- inside ------------------------------------------------------------------------------

    def _regional(self, principal: Principal) -> bool:
        """A regional identity administrator: an administrator of no trust."""
        return principal.trust is None and self._access.permits(principal, Permission.ADMIN)

    def _find(self, principal: Principal, conn: Connection, held_pk: int) -> dict[str, Any]:
        row = held_store.held_row(conn, held_pk) if self._regional(principal) else None
        if row is None or row["kind"] is not None:  # outside studies: outside_imports.py
            raise NotFound(f"no held instance {held_pk}")
        return row

    def _target(self, conn: Connection, row: dict[str, Any]) -> tuple[tuple[str, str] | None, str]:
        """The record to file under, or None and why not. Under the record the instance
        names (its merged successor if retired) when its UIDs are filed nowhere or there; under
        the record holding them when that is the same person (linked); otherwise refused."""
        named = self._identity.resolve(row["patient_issuer"], row["patient_id"], conn=conn)
        holders = held_store.owners(conn, row["study_uid"], row["series_uid"], row["sop_uid"])
        if not holders:
            if named is None:
                return (str(row["patient_issuer"]), str(row["patient_id"])), ""
            return (named.issuer, named.local_id), ""
        records = identity_store.get_patients(conn, holders)
        where = ", ".join(f"{r['local_id']} of {r['issuer']}" for r in records)
        if named is None:
            return None, (
                f"its UIDs are filed under record {where}, and the record it names, "
                f"{_key(row)}, does not exist, so it cannot be the same person; discard it, "
                "or correct the holding record first"
            )
        same = self._identity.linked_patient_pks(named.patient_pk, conn=conn) | {named.patient_pk}
        if len(records) == 1 and holders <= same:
            return (str(records[0]["issuer"]), str(records[0]["local_id"])), ""
        return None, (
            f"its UIDs are filed under record {where}, which is not linked to {_key(row)} "
            "(a different person as far as the archive knows); link the records if they are "
            "the same person (POST /api/identity/link), correct the holding record, or discard "
            "the held instance"
        )

    def _view(self, conn: Connection, row: dict[str, Any]) -> dict[str, Any]:
        holder = (
            identity_store.get_patient(conn, int(row["holder_pk"]))
            if row["holder_pk"] is not None
            else None
        )
        conflict = _decided(row) or (self._target(conn, row)[1] if row["status"] == "held" else "")
        return {
            "id": row["pk"],
            "status": row["status"],
            "received_at": _iso(row["at"]),
            "sender": row["sender"],
            "sender_trust": row["sender_trust"],
            "calling_ae": row["calling_ae"],
            "patient": {"issuer": row["patient_issuer"], "patient_id": row["patient_id"]},
            "study_uid": row["study_uid"],
            "series_uid": row["series_uid"],
            "sop_uid": row["sop_uid"],
            "reason": row["reason"],
            "holder": {"issuer": holder["issuer"], "patient_id": holder["local_id"]}
            if holder
            else None,
            "work_item": row["work_item"],
            "releasable": row["status"] == "held" and not conflict,
            "conflict": conflict or None,
            "resolved_by": row["resolved_by"],
            "resolved_at": _iso(row["resolved_at"]),
            "resolution": row["resolution"],
        }

    def _refused(self, principal: Principal, row: dict[str, Any], what: str, why: str) -> NoReturn:
        """Audit the refused decision (one record) and raise it; nothing else is written."""
        self._audit.record(
            principal,
            AuditAction.STORE if what == "release" else AuditAction.DELETE,
            AuditOutcome.FAILURE,
            patient=_named(row),
            study_uid=row["study_uid"],
            detail={**_about(row), "change": f"{what} refused", "reason": why},
        )
        raise HeldConflict(f"held instance {row['pk']} cannot be {what}d: {why}")

    def _copy_out(self, row: dict[str, Any]) -> Path:
        return copy_out(self._store, str(row["path"]))

    def _remove_copy(self, row: dict[str, Any]) -> None:
        remove_copy(self._store, str(row["path"]))


def copy_out(store: BlobStore, path: str) -> Path:
    """A kept copy as a temporary file for ingest (which may move it into the store)."""
    fd, name = tempfile.mkstemp(prefix="solent-release-")
    try:
        with store.open(path) as src, os.fdopen(fd, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise
    return Path(name)


def remove_copy(store: BlobStore, path: str) -> None:
    """After the decision committed: a copy left by a failure here is an orphan to
    `solent check --repair` (only held rows keep their copies)."""
    with contextlib.suppress(StorageError, OSError):
        store.delete(path)


def _named(row: dict[str, Any]) -> PatientRef | None:
    if not row["patient_issuer"] or not row["patient_id"]:
        return None
    return PatientRef(str(row["patient_issuer"]), str(row["patient_id"]), None)


def _key(row: dict[str, Any]) -> str:
    return f"{row['patient_id']} of {row['patient_issuer']}"


def _about(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "held": row["pk"],
        "sop_instance_uid": row["sop_uid"],
        "series_uid": row["series_uid"],
        "sent_by": row["sender"],
    }


def _decided(row: dict[str, Any]) -> str:
    if row["status"] == "held":
        return ""
    return f"it was {row['status']} by {row['resolved_by']} at {_iso(row['resolved_at'])}"


def _refusal(exc: Exception) -> str:
    if isinstance(exc, AlreadyStoredError):
        return (
            "its SOP Instance UID is filed already "
            f"({'identical content' if exc.identical else 'different content'}); "
            "discard the held copy"
        )
    return f"the archive refused to file it: {exc}"


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()
