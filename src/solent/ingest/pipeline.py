"""parse -> validate -> attribute to trust and patient -> durable blob -> index -> event.

A STORED outcome is returned only after the blob is fsynced (or PUT) and the index transaction
has committed; a failure part-way removes what it wrote, and `solent check` finds anything a
crash left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

from sqlalchemy import Connection

from solent.dicom.inflate import InflateLimits
from solent.dicom.parse import ParsedInstance, RejectedInstance, parse_file
from solent.domain.outcomes import Outcome, RejectReason, StoreResult
from solent.domain.principal import OUTSIDE_SOURCE, Channel, Principal, Provenance
from solent.errors import IndexUnavailable, NotFound, StorageError
from solent.index.key_objects import author_of, record_references
from solent.index.records import (
    AlreadyStoredError,
    PatientMismatchError,
    RecordedInstance,
    record_instance,
)
from solent.index.rejection import WithdrawnInstance, rejected_before
from solent.index.sql import Index
from solent.ingest.held import Holding, hidden_holder
from solent.ingest.prepared import Prepared, result_for, store_detail
from solent.ingest.rejection import apply_note
from solent.ingest.write_gate import WriteGate
from solent.metrics import INGEST_BYTES, INGEST_INSTANCES, INGEST_SECONDS
from solent.services.access import AccessService, Permission, permissions_of
from solent.services.audit import (
    AuditAction,
    AuditOutcome,
    AuditTrail,
    PatientRef,
    audit_fields,
)
from solent.storage import PLACED, BlobStore, Placement, blob_key_for

RecordedT = TypeVar("RecordedT")

#: Ways in audited as DICOM "Import" (110107) rather than a network store: media and folders,
#: migration, and an outside study filed under the record a steward chose (R28, IRWF.b).
IMPORT_CHANNELS = frozenset({Channel.IMPORT, Channel.MIGRATION, Channel.RECONCILE})


log = logging.getLogger(__name__)


def _request_mismatch(parsed: ParsedInstance, sop_class: str, sop_instance: str) -> str | None:
    """Why the dataset does not match the C-STORE request that carried it (PS3.4 A900)."""
    if parsed.sop_class_uid and parsed.sop_class_uid != sop_class:
        return f"SOP Class UID {parsed.sop_class_uid} differs from the request's {sop_class}"
    if parsed.sop_instance_uid and parsed.sop_instance_uid != sop_instance:
        return "SOP Instance UID differs from the request's Affected SOP Instance UID"
    return None


@dataclass(frozen=True, slots=True)
class IngestPolicy:
    conflict: str = "reject"  # or "replace"
    missing_patient_id: str = "placeholder"  # or "reject"
    nhs_number_tag: str = ""
    production: bool = False  # R2: flag NHS test numbers (999 range) and never link on them
    inflate: InflateLimits = field(default_factory=InflateLimits)  # deflated TS cap (issue 11)


def placeholder_patient_id(study_uid: str) -> str:
    """One unidentified record per study, so unrelated unidentified studies never share one."""
    return "UNIDENTIFIED-" + hashlib.sha256(study_uid.encode()).hexdigest()[:16].upper()


@dataclass(slots=True)
class _Waiting:
    """A prepared instance queued for the next group commit, and its result once committed."""

    prepared: Prepared
    result: StoreResult | None = None


class Ingestor:
    def __init__(self, index: Index, store: BlobStore, policy: IngestPolicy | None = None) -> None:
        self._index = index
        self._store = store
        self.policy = policy or IngestPolicy()
        self._trusts: set[str] = set()
        self._audit = AuditTrail(index)  # security (issue 6): every store is audited
        self._access = AccessService(index, self._audit)  # what a sender may see (held instances)
        # Group commit: instances prepared concurrently (several associations, import workers)
        # queue here; whoever holds the commit lock indexes the whole queue in one transaction.
        self._queue: list[_Waiting] = []
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._gate = WriteGate(index)
        self._held = Holding(index, store, self._audit, self._gate, self._forget_blob)

    def _write_gate(self) -> contextlib.AbstractContextManager[None]:
        """Ingest's index writes, one at a time across threads and processes (write_gate)."""
        return self._gate.held()

    def _trust_exists(self, code: str) -> bool:
        if code not in self._trusts:
            if self._index.get_trust(code) is None:
                return False
            self._trusts.add(code)
        return True

    def ingest_file(
        self,
        path: Path,
        principal: Principal,
        provenance: Provenance,
        *,
        move: bool = False,
        sha256: str | None = None,
        expect: tuple[str, str] | None = None,
    ) -> StoreResult:
        """Store one file as received. ``move`` lets a spooled temp file be consumed.

        ``expect`` is the (SOP Class UID, SOP Instance UID) a C-STORE request announced; a
        dataset that says otherwise is refused (PS3.4 A900) from the one parse ingest makes.
        """
        started = time.perf_counter()
        result = self._ingest(path, principal, provenance, move=move, sha256=sha256, expect=expect)
        return self._observe(result, principal, provenance, started)

    def ingest_files(
        self,
        items: Sequence[tuple[Path, Provenance]],
        principal: Principal,
        *,
        file_under: tuple[str, str] | None = None,
    ) -> list[StoreResult]:
        """Store several files (an import batch) with one index transaction: group commit.

        ``file_under`` is the (issuer, local ID) of the record to file under instead of the
        caller's trust and each file's Patient ID: migration uses it only for a study already
        filed under a record the identity service links to the sender's (issue 13).

        Each blob is durable before the transaction and the transaction commits before any
        result is returned, so every STORED is as durable as from ingest_file; the saving is
        one index commit (one fsync) for the batch instead of one per instance. If the batch
        transaction fails, each instance is committed alone to get its own outcome.
        """
        started = time.perf_counter()
        results: dict[int, StoreResult] = {}
        prepared: list[tuple[int, Prepared]] = []
        for i, (path, provenance) in enumerate(items):
            ready = self._prepare(
                path, principal, provenance, move=False, sha256=None, file_under=file_under
            )
            if isinstance(ready, StoreResult):
                results[i] = ready
            else:
                prepared.append((i, ready))
        committed = self._commit_batch([p for _, p in prepared])
        for (i, _), result in zip(prepared, committed, strict=True):
            results[i] = result
        return [
            self._observe(results[i], principal, provenance, started)
            for i, (_, provenance) in enumerate(items)
        ]

    def _observe(
        self, result: StoreResult, principal: Principal, provenance: Provenance, started: float
    ) -> StoreResult:
        """Metrics, log line and (for anything but a store) the audit record of one result."""
        if result.outcome not in (Outcome.STORED, Outcome.REPLACED, Outcome.HELD):
            # Stored and held instances were audited inside their index transaction.
            self._audit_other(principal, provenance, result)
        channel = provenance.channel.value
        INGEST_INSTANCES.labels(
            channel, result.outcome.value, result.reason.value if result.reason else ""
        ).inc()
        if result.outcome in (Outcome.STORED, Outcome.REPLACED):
            INGEST_SECONDS.labels(channel).observe(time.perf_counter() - started)
        if result.outcome is Outcome.REJECTED:
            log.info(
                "instance rejected",
                extra={
                    "sop_instance_uid": result.sop_instance_uid,
                    "reason": result.reason,
                    "channel": channel,
                },
            )
        return result

    def _ingest(
        self,
        path: Path,
        principal: Principal,
        provenance: Provenance,
        *,
        move: bool,
        sha256: str | None,
        expect: tuple[str, str] | None = None,
    ) -> StoreResult:
        ready = self._prepare(path, principal, provenance, move=move, sha256=sha256, expect=expect)
        return ready if isinstance(ready, StoreResult) else self._commit_grouped(ready)

    def _commit_grouped(self, p: Prepared) -> StoreResult:
        """Index ``p`` in the next group commit and wait for its own result.

        Callers queue their instance, then take the commit lock in turn. The holder commits
        everything queued so far (its own instance included) in one transaction; a caller
        whose instance an earlier holder already committed just returns its result. A lone
        caller commits alone at once: no waiting, so one association loses nothing.

        The queue is taken only once the write gate is held: while the holder waits for the
        gate (another DIMSE worker process is committing), this process's other associations
        queue behind it and go into the same transaction, one WAL fsync for all of them.
        """
        waiting = _Waiting(p)
        with self._queue_lock:
            self._queue.append(waiting)
        with self._commit_lock:
            if waiting.result is None:
                try:
                    with self._write_gate():
                        with self._queue_lock:
                            batch, self._queue = self._queue, []
                        try:
                            results = self._commit_batch([w.prepared for w in batch])
                        except Exception:
                            # Never leave a queued caller without an answer (it would report
                            # success of nothing); the failure propagates to this caller.
                            for w in batch:
                                if w is not waiting:
                                    w.result = self._unanswered(w.prepared)
                            raise
                        for w, result in zip(batch, results, strict=True):
                            w.result = result
                finally:
                    if waiting.result is None:
                        # Failed, maybe before the gate: out of the queue, so no later holder
                        # indexes an instance whose caller reports a failure.
                        with self._queue_lock:
                            self._queue = [w for w in self._queue if w is not waiting]
        assert waiting.result is not None
        return waiting.result

    def _unanswered(self, p: Prepared) -> StoreResult:
        """The result of a queued instance whose group commit failed unexpectedly."""
        self._forget_blob(p.key)
        return StoreResult.rejected(
            RejectReason.STORAGE_FAILURE,
            "index write failed",
            sop_class_uid=p.parsed.sop_class_uid,
            sop_instance_uid=p.parsed.sop_instance_uid,
        )

    def _commit_batch(self, batch: list[Prepared]) -> list[StoreResult]:
        """Index several prepared instances in ONE transaction, one savepoint each.

        An instance refused by the index (duplicate, conflict, patient mismatch) rolls back
        only its savepoint; any other failure of the batch transaction falls back to one
        transaction per instance so each still gets its own outcome. Results are built after
        the commit, so a STORED is never reported for rows that are not durable.
        """
        if len(batch) == 1:
            return [self._commit(batch[0])]
        if not batch:
            return []

        def op(conn: Connection) -> list[RecordedInstance | Exception]:
            out: list[RecordedInstance | Exception] = []
            for p in batch:
                try:
                    with conn.begin_nested():
                        out.append(self._record(conn, p))
                except (AlreadyStoredError, PatientMismatchError, WithdrawnInstance) as exc:
                    out.append(exc)
            for p in batch:  # durable blobs before the commit; one failure: one by one below
                p.placement.wait()
            return out

        try:
            with self._write_gate():
                recorded = self._index.write(op)
        except Exception:
            log.info("group index write failed; committing its instances one by one")
            return [self._commit(p) for p in batch]
        return [self._settle(p, rec) for p, rec in zip(batch, recorded, strict=True)]

    def _settle(self, p: Prepared, recorded: RecordedInstance | Exception) -> StoreResult:
        """The result of one committed (or index-refused) instance; undo its blob if refused."""
        if isinstance(recorded, RecordedInstance):
            return self._finish(p, recorded)
        parsed = p.parsed
        if isinstance(recorded, WithdrawnInstance):
            self._forget_blob(p.key)  # kept if it is the rejected instance's own blob
            return StoreResult.rejected(
                RejectReason.CONFLICT,
                f"this SOP Instance UID was rejected by an IOCM note ({recorded.meaning}, "
                f"note {recorded.note_uid}); send corrected images with new SOP Instance UIDs",
                sop_class_uid=parsed.sop_class_uid,
                sop_instance_uid=parsed.sop_instance_uid,
            )
        if hidden_holder(self._access, p.principal, recorded):
            return self._held.hold(p, recorded)
        if isinstance(recorded, AlreadyStoredError):
            if recorded.identical:
                # Same content, same content-addressed key: the blob is the stored one's.
                return result_for(
                    Outcome.DUPLICATE, parsed, "already stored with identical content"
                )
            self._forget_blob(p.key)
            return StoreResult.rejected(
                RejectReason.CONFLICT,
                "an instance with this SOP Instance UID is already stored with different "
                "content; the first one is kept",
                sop_class_uid=parsed.sop_class_uid,
                sop_instance_uid=parsed.sop_instance_uid,
            )
        self._forget_blob(p.key)
        return StoreResult.rejected(
            RejectReason.PATIENT_MISMATCH,
            str(recorded),
            sop_class_uid=parsed.sop_class_uid,
            sop_instance_uid=parsed.sop_instance_uid,
        )

    def _prepare(
        self,
        path: Path,
        principal: Principal,
        provenance: Provenance,
        *,
        move: bool,
        sha256: str | None,
        expect: tuple[str, str] | None = None,
        file_under: tuple[str, str] | None = None,
    ) -> StoreResult | Prepared:
        """Parse, validate, attribute, and write the blob durably; a result if it stops here."""
        trust = principal.trust
        if Permission.STORE not in permissions_of(principal):
            return StoreResult.rejected(
                RejectReason.NOT_PERMITTED, "your role does not allow storing instances"
            )
        if not trust or not self._trust_exists(trust):
            return StoreResult.rejected(
                RejectReason.UNKNOWN_TRUST,
                f"no trust {trust!r} is registered; add it with `solent trust add`",
            )
        return self._place(
            path,
            principal,
            provenance,
            trust,
            move=move,
            sha256=sha256,
            expect=expect,
            file_under=file_under,
        )

    def _place(
        self,
        path: Path,
        principal: Principal,
        provenance: Provenance,
        trust: str,
        *,
        move: bool,
        sha256: str | None,
        expect: tuple[str, str] | None = None,
        file_under: tuple[str, str] | None = None,
    ) -> StoreResult | Prepared:
        """Parse, validate and write the blob durably for a caller already allowed to file
        under ``trust`` (or ``file_under``); a result if it stops here."""
        # A spooled file whose digest is known goes into the store BEFORE it is parsed: its
        # fsyncs then run while this thread parses and writes the index rows, and the index
        # commit waits for them (_record). One that parsing refuses is taken out again.
        early: Placement | None = None
        key = blob_key_for(sha256) if sha256 else ""
        try:
            with contextlib.ExitStack() as stack:
                opened: BinaryIO | None = None
                if sha256 and move:
                    # "rb+": pydicom then reads deferred values from this open file, not by
                    # a path that is moved away meanwhile.
                    opened = stack.enter_context(path.open("rb+"))
                    try:
                        early = self._store.place_file(key, path)
                    except StorageError as exc:
                        return StoreResult.rejected(RejectReason.STORAGE_FAILURE, str(exc))
                parsed = parse_file(
                    path,
                    sha256=sha256,
                    nhs_tag=self.policy.nhs_number_tag,
                    inflate=self.policy.inflate,
                    opened=opened,
                )
        except RejectedInstance as exc:
            self._undo_early(early, key)
            return StoreResult.rejected(
                exc.reason, exc.message, sop_instance_uid=exc.sop_instance_uid
            )
        except OSError as exc:
            self._undo_early(early, key)
            return StoreResult.rejected(
                RejectReason.MALFORMED, f"cannot read the file: {exc.strerror}"
            )
        except BaseException:
            self._undo_early(early, key)
            raise

        def rejected(reason: RejectReason, message: str) -> StoreResult:
            self._undo_early(early, key)
            return StoreResult.rejected(
                reason,
                message,
                sop_class_uid=parsed.sop_class_uid,
                sop_instance_uid=parsed.sop_instance_uid,
            )

        if expect is not None:
            mismatch = _request_mismatch(parsed, *expect)
            if mismatch:
                return rejected(RejectReason.INVALID_UID, mismatch)

        local_id = parsed.patient["local_id"]
        placeholder = False
        if file_under is not None:
            trust, local_id = file_under
        if not local_id:
            if self.policy.missing_patient_id == "reject":
                return rejected(RejectReason.MISSING_ATTRIBUTE, "PatientID is missing")
            local_id, placeholder = placeholder_patient_id(parsed.study_uid), True

        # The duplicate / conflict check runs inside the index transaction (record_instance).
        replace = self.policy.conflict == "replace"
        placement: Placement = PLACED
        if early is not None:
            placement = early
        else:
            key = blob_key_for(parsed.sha256)
            try:
                self._store.put_file(key, path, move=move)
            except StorageError as exc:
                return rejected(RejectReason.STORAGE_FAILURE, str(exc))
        ready = Prepared(
            parsed, principal, provenance, trust, local_id, placeholder, replace, key, placement
        )
        if file_under is None and OUTSIDE_SOURCE in principal.roles:
            # R28: from outside the consortium: filed under nobody until a steward decides.
            return self._held.hold_outside(ready)
        return ready

    def file_kept(
        self,
        path: Path,
        principal: Principal,
        provenance: Provenance,
        *,
        file_under: tuple[str, str],
        within: Callable[[Connection, RecordedInstance], None],
        record_says: bool = False,
    ) -> StoreResult:
        """File a copy kept outside the archive (a held instance a person released) through
        this pipeline: the same parse, validation, index rows and store audit record, under
        ``file_under`` (issuer, local ID). The caller (a service) has decided who may; no
        store permission or trust of the caller's own is asked. ``within`` runs in the same
        transaction once the rows are written and may raise to undo everything; it, and the
        index's own refusals (``AlreadyStoredError``, ``PatientMismatchError``), propagate
        after the new blob is forgotten. Durable before it returns, as every store.

        ``record_says``: the record is who the patient is (an outside study a steward
        reconciled, R28): the NHS number the instance carries fills nothing on it."""
        started = time.perf_counter()
        if not self._trust_exists(file_under[0]):
            raise NotFound(f"no trust {file_under[0]!r} is registered")
        ready = self._place(
            path, principal, provenance, file_under[0], move=True, sha256=None,
            file_under=file_under,
        )  # fmt: skip
        if isinstance(ready, StoreResult):
            return self._observe(ready, principal, provenance, started)
        if record_says:
            ready.parsed.patient = {
                **ready.parsed.patient,
                "nhs_number": None,
                "nhs_number_valid": None,
            }

        def op(conn: Connection) -> RecordedInstance:
            recorded = self._record(conn, ready)
            within(conn, recorded)
            ready.placement.wait()  # the blob is durable before its rows commit
            return recorded

        try:
            with self._write_gate():
                recorded = self._index.write(op)
        except BaseException:
            self._forget_blob(ready.key)
            raise
        return self._observe(self._finish(ready, recorded), principal, provenance, started)

    def _undo_early(self, early: Placement | None, key: str) -> None:
        """Take a blob placed before parsing out again (its instance was refused)."""
        if early is None:
            return
        with contextlib.suppress(StorageError):
            early.wait()  # its fsyncs hold its descriptor until done
        self._forget_blob(key)

    def _record(self, conn: Connection, p: Prepared) -> RecordedInstance:
        """The index rows and audit record of one prepared instance, in ``conn``'s transaction.

        Called before the blob's fsyncs are done (Placement): the caller's transaction must
        ``wait`` for them before it commits, so no row is durable before its blob."""
        p.warning = ""
        withdrawn = rejected_before(conn, p.parsed.sop_instance_uid)
        if withdrawn is not None:
            raise WithdrawnInstance(*withdrawn)
        recorded = self._audited(
            conn,
            p.principal,
            p.provenance,
            p.parsed,
            record_instance(
                self._index,
                conn,
                p.parsed,
                trust=p.trust,
                patient_local_id=p.local_id,
                placeholder=p.placeholder,
                blob_key=p.key,
                provenance=p.provenance,
                principal=p.principal,
                replace=p.replace,
                production=self.policy.production,
            ),
        )
        if p.parsed.rejection is not None:
            p.warning = apply_note(conn, self._audit, p.principal, p.parsed, p.parsed.rejection)
        elif p.parsed.key_object is not None:
            record_references(
                conn,
                p.parsed.sop_instance_uid,
                p.parsed.series_uid,
                p.parsed.study_uid,
                p.parsed.key_object,
                author_of(p.principal),
            )
        return recorded

    def _commit(self, p: Prepared) -> StoreResult:
        """Index one prepared instance in its own transaction; undo the blob on failure."""
        parsed, key = p.parsed, p.key

        def rejected(reason: RejectReason, message: str) -> StoreResult:
            return StoreResult.rejected(
                reason,
                message,
                sop_class_uid=parsed.sop_class_uid,
                sop_instance_uid=parsed.sop_instance_uid,
            )

        def op(conn: Connection) -> RecordedInstance:
            recorded = self._record(conn, p)
            p.placement.wait()  # the blob is durable before its rows commit
            return recorded

        try:
            with self._write_gate():
                recorded = self._index.write(op)
        except (AlreadyStoredError, PatientMismatchError, WithdrawnInstance) as exc:
            with contextlib.suppress(StorageError):  # its own fsyncs end before it is judged
                p.placement.wait()
            return self._settle(p, exc)
        except StorageError as exc:
            self._forget_blob(key)
            return rejected(RejectReason.STORAGE_FAILURE, str(exc))
        except IndexUnavailable as exc:
            self._forget_blob(key)
            return rejected(RejectReason.STORAGE_FAILURE, str(exc))
        except Exception as exc:
            # A concurrent writer stored the same SOP Instance UID first: report as it stands now.
            again = self._index.instance_digest(parsed.sop_instance_uid)
            if again is not None:
                if again[0] == parsed.sha256:
                    return result_for(
                        Outcome.DUPLICATE, parsed, "stored concurrently with identical content"
                    )
                self._forget_blob(key)
                return rejected(RejectReason.CONFLICT, "stored concurrently with different content")
            self._forget_blob(key)
            log.exception("index write failed")
            return rejected(
                RejectReason.STORAGE_FAILURE, f"index write failed: {type(exc).__name__}"
            )

        return self._finish(p, recorded)

    def _finish(self, p: Prepared, recorded: RecordedInstance) -> StoreResult:
        if recorded.replaced_blob_key and recorded.replaced_blob_key != p.key:
            self._forget_blob(recorded.replaced_blob_key)
        INGEST_BYTES.labels(p.provenance.channel.value).inc(p.parsed.size)
        outcome = Outcome.REPLACED if recorded.replaced_blob_key else Outcome.STORED
        return result_for(outcome, p.parsed, "", warning=p.warning)

    def _audited(
        self,
        conn: Connection,
        principal: Principal,
        provenance: Provenance,
        parsed: ParsedInstance,
        recorded: RecordedT,
    ) -> RecordedT:
        """Append the store's audit record in the same transaction as the index rows."""
        patient = (
            PatientRef(
                recorded.patient_issuer, recorded.patient_local_id, recorded.patient_nhs_number
            )
            if isinstance(recorded, RecordedInstance) and recorded.patient_issuer
            else None  # append_in looks the study's patient up
        )
        self._audit.append_in(
            conn,
            audit_fields(
                principal,
                AuditAction.IMPORT if provenance.channel in IMPORT_CHANNELS else AuditAction.STORE,
                patient=patient,
                study_uid=parsed.study_uid,
                detail=store_detail(provenance, parsed.sop_instance_uid, parsed.series_uid, ""),
            ),
        )
        return recorded

    def _audit_other(
        self, principal: Principal, provenance: Provenance, result: StoreResult
    ) -> None:
        """Audit a duplicate or a rejection (no index transaction to ride on)."""
        try:
            self._audit.record(
                principal,
                AuditAction.IMPORT if provenance.channel in IMPORT_CHANNELS else AuditAction.STORE,
                AuditOutcome.SUCCESS if result.ok else AuditOutcome.FAILURE,
                study_uid=result.study_uid,
                detail=store_detail(
                    provenance,
                    result.sop_instance_uid,
                    result.series_uid,
                    result.reason.value if result.reason else result.outcome.value,
                ),
            )
        except Exception:
            log.exception("could not write the audit record of a refused/duplicate instance")

    def _forget_blob(self, key: str) -> None:
        """Delete a blob we wrote unless an index row (ours or a concurrent one) uses it."""
        try:
            if not self._index.blob_referenced(key):
                self._store.delete(key)
        except Exception:
            log.warning(
                "could not remove an unindexed blob; `solent check --repair` will", exc_info=True
            )
