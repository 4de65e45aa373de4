"""Instances held for identity reconciliation (issue 11; the index side is
``solent.index.held``): the index refused one because of a record the sender may not see, and
refusing would tell the sender that record exists; or it came from outside the consortium (an
IEP gateway, a PDI disc, another organisation's PACS: R28) and must not be seen under anyone
until an identity steward reconciles it. Ingest keeps a copy filed under no patient and
answers exactly as for a stored instance."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection

from solent.domain.outcomes import Outcome, RejectReason, StoreResult
from solent.domain.principal import Principal
from solent.errors import StorageError
from solent.index.held import HELD, OUTSIDE, HeldInstance, record_held
from solent.index.records import AlreadyStoredError, PatientMismatchError
from solent.index.sql import Index
from solent.ingest.prepared import Prepared, result_for, store_detail
from solent.ingest.write_gate import WriteGate
from solent.services.access import AccessService
from solent.services.audit import AuditAction, AuditTrail, PatientRef, audit_fields
from solent.storage import BlobStore, blob_key_for

__all__ = ["HELD", "OUTSIDE", "Holding", "held_key", "hidden_holder", "keep_copy"]

log = logging.getLogger(__name__)


def held_key(sha256_hex: str) -> str:
    """Where a held instance's copy lives: shaped like a content key but never equal to one,
    so ingest's clean-up of a refused blob with the same bytes cannot delete it."""
    key = blob_key_for(sha256_hex)
    return f"{key[:6]}h{key[6:]}"


def keep_copy(store: BlobStore, key: str, held: str, tmp_dir: Path | None = None) -> None:
    """Copy blob ``key`` to ``held`` (durable, as every put). The store has no copy of its
    own (S3 and files differ), so the bytes go through a temporary file, removed whatever
    happens."""
    fd, name = tempfile.mkstemp(prefix="solent-held-", dir=tmp_dir)
    try:
        with store.open(key) as src, os.fdopen(fd, "wb") as tmp:
            shutil.copyfileobj(src, tmp, 1 << 20)
        store.put_file(held, Path(name), move=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def hidden_holder(access: AccessService, principal: Principal, refused: Exception) -> bool:
    """True when the index refused the instance because of a record the sender may not
    see: its study, series or SOP Instance UID is filed under another trust's patient."""
    holder = getattr(refused, "holder_pk", None)
    if holder is None or not isinstance(refused, AlreadyStoredError | PatientMismatchError):
        return False
    return not access.visible_among(principal, [holder])


class Holding:
    """Holds refused instances for ingest (``Ingestor`` owns one, sharing its gate)."""

    def __init__(
        self,
        index: Index,
        store: BlobStore,
        audit: AuditTrail,
        gate: WriteGate,
        forget_blob: Callable[[str], None],
    ) -> None:
        self._index = index
        self._store = store
        self._audit = audit
        self._gate = gate
        self._forget_blob = forget_blob  # the pipeline's: removes a blob no index row uses

    def hold(self, p: Prepared, refused: Exception) -> StoreResult:
        """Keep the instance filed under no patient, and answer exactly as for a stored one:
        never images under the wrong patient, and nothing about the other record in the
        answer (``solent.index.held``: the regional work item)."""
        holder = getattr(refused, "holder_pk", None)
        reason = (
            str(refused)
            if isinstance(refused, PatientMismatchError)
            else "this SOP Instance UID is already stored with different content"
        )
        return self._keep(
            p, holder_pk=None if holder is None else int(holder), reason=reason, kind=None
        )

    def hold_outside(self, p: Prepared) -> StoreResult:
        """R28: an instance from outside the consortium, kept filed under no patient (nobody
        finds or retrieves it) until an identity steward reconciles its study to a patient
        record or rejects it (``solent.services.outside_imports``). Audited as an import."""
        return self._keep(
            p,
            holder_pk=None,
            reason="from outside the consortium; held until reconciled to a patient record",
            kind=OUTSIDE,
        )

    def _keep(
        self, p: Prepared, *, holder_pk: int | None, reason: str, kind: str | None
    ) -> StoreResult:
        parsed, who = p.parsed, p.principal
        held = held_key(parsed.sha256)
        try:
            p.placement.wait()
            keep_copy(self._store, p.key, held)
        except (OSError, StorageError) as exc:
            self._forget_blob(p.key)
            return StoreResult.rejected(
                RejectReason.STORAGE_FAILURE,
                f"could not keep the instance: {exc}",
                sop_class_uid=parsed.sop_class_uid,
                sop_instance_uid=parsed.sop_instance_uid,
            )
        patient, study = parsed.patient, parsed.study
        instance = HeldInstance(
            sop_uid=parsed.sop_instance_uid,
            series_uid=parsed.series_uid,
            study_uid=parsed.study_uid,
            sha256=parsed.sha256,
            path=held,
            sender=who.describe(),
            trust=p.trust,
            local_id=p.local_id,
            holder_pk=holder_pk,
            reason=reason,
            calling_ae=p.provenance.calling_ae,
            kind=kind,
            original_issuer=patient.get("issuer_in_file"),
            patient_name=patient.get("name"),
            patient_birth_date=patient.get("birth_date"),
            patient_sex=patient.get("sex"),
            study_date=study.get("study_date"),
            study_description=study.get("study_description"),
            accession_number=study.get("accession_number"),
            modality=parsed.series.get("modality"),
        )
        outside = kind == OUTSIDE

        def op(conn: Connection) -> None:
            item = record_held(conn, instance)  # None: sent again, held already
            detail = store_detail(p.provenance, parsed.sop_instance_uid, parsed.series_uid, "held")
            if outside:
                # The identity it came with names nobody of the consortium (yet): kept in the
                # detail, so the import is found by study and by what the outside said.
                detail = {**detail, **_as_sent(instance)}
            self._audit.append_in(
                conn,
                audit_fields(
                    who,
                    AuditAction.IMPORT if outside else AuditAction.STORE,
                    patient=None
                    if outside
                    else PatientRef(p.trust, p.local_id, parsed.patient.get("nhs_number")),
                    study_uid=parsed.study_uid,
                    detail={**detail, "work_item": item},
                ),
            )

        try:
            with self._gate.held():
                self._index.write(op)
        except Exception:
            log.exception("could not record a held instance")
            self._forget_blob(p.key)
            return StoreResult.rejected(
                RejectReason.STORAGE_FAILURE,
                "index write failed",
                sop_class_uid=parsed.sop_class_uid,
                sop_instance_uid=parsed.sop_instance_uid,
            )
        if not self._index.blob_referenced(p.key):
            self._forget_blob(p.key)
        log.warning(
            "outside instance held until reconciled"
            if outside
            else "instance held for identity reconciliation",
            extra={"sop_instance_uid": parsed.sop_instance_uid, "sender": who.describe()},
        )
        return result_for(Outcome.HELD, parsed, "")


def _as_sent(held: HeldInstance) -> dict[str, str]:
    """The outside identity and study as the instance carried them (audit detail)."""
    return {
        k: v
        for k, v in (
            ("original_patient_id", held.local_id),
            ("original_issuer", held.original_issuer),
            ("original_name", held.patient_name),
            ("original_birth_date", held.patient_birth_date),
            ("accession_number", held.accession_number),
        )
        if v
    }
