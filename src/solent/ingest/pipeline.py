"""parse -> validate -> attribute to trust and patient -> durable blob -> index -> event.

A STORED outcome is returned only after the blob is fsynced (or PUT) and the index transaction
has committed; a failure part-way removes what it wrote, and `solent check` finds anything a
crash left behind.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from solent.dicom.parse import ParsedInstance, RejectedInstance, parse_file
from solent.domain.outcomes import Outcome, RejectReason, StoreResult
from solent.domain.principal import Principal, Provenance
from solent.errors import IndexUnavailable, StorageError
from solent.index.records import PatientMismatchError, record_instance
from solent.index.sql import Index
from solent.metrics import INGEST_BYTES, INGEST_INSTANCES, INGEST_SECONDS
from solent.storage import BlobStore, blob_key_for

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestPolicy:
    conflict: str = "reject"  # or "replace"
    missing_patient_id: str = "placeholder"  # or "reject"
    nhs_number_tag: str = ""


def placeholder_patient_id(study_uid: str) -> str:
    """One unidentified record per study, so unrelated unidentified studies never share one."""
    return "UNIDENTIFIED-" + hashlib.sha256(study_uid.encode()).hexdigest()[:16].upper()


class Ingestor:
    def __init__(self, index: Index, store: BlobStore, policy: IngestPolicy | None = None) -> None:
        self.index = index
        self.store = store
        self.policy = policy or IngestPolicy()
        self._trusts: set[str] = set()

    def _trust_exists(self, code: str) -> bool:
        if code not in self._trusts:
            if self.index.get_trust(code) is None:
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
    ) -> StoreResult:
        """Store one file as received. ``move`` lets a spooled temp file be consumed."""
        started = time.perf_counter()
        result = self._ingest(path, principal, provenance, move=move, sha256=sha256)
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
    ) -> StoreResult:
        trust = principal.trust
        if not trust or not self._trust_exists(trust):
            return StoreResult.rejected(
                RejectReason.UNKNOWN_TRUST,
                f"no trust {trust!r} is registered; add it with `solent trust add`",
            )
        try:
            parsed = parse_file(path, sha256=sha256, nhs_tag=self.policy.nhs_number_tag)
        except RejectedInstance as exc:
            return StoreResult.rejected(
                exc.reason, exc.message, sop_instance_uid=exc.sop_instance_uid
            )
        except OSError as exc:
            return StoreResult.rejected(
                RejectReason.MALFORMED, f"cannot read the file: {exc.strerror}"
            )

        def rejected(reason: RejectReason, message: str) -> StoreResult:
            return StoreResult.rejected(
                reason,
                message,
                sop_class_uid=parsed.sop_class_uid,
                sop_instance_uid=parsed.sop_instance_uid,
            )

        local_id = parsed.patient["local_id"]
        placeholder = False
        if not local_id:
            if self.policy.missing_patient_id == "reject":
                return rejected(RejectReason.MISSING_ATTRIBUTE, "PatientID is missing")
            local_id, placeholder = placeholder_patient_id(parsed.study_uid), True

        existing = self.index.instance_digest(parsed.sop_instance_uid)
        replace = False
        if existing is not None:
            if existing[0] == parsed.sha256:
                return self._result(
                    Outcome.DUPLICATE, parsed, "already stored with identical content"
                )
            if self.policy.conflict == "reject":
                return rejected(
                    RejectReason.CONFLICT,
                    "an instance with this SOP Instance UID is already stored with different "
                    "content; the first one is kept",
                )
            replace = True

        key = blob_key_for(parsed.sha256)
        try:
            self.store.put_file(key, path, move=move)
        except StorageError as exc:
            return rejected(RejectReason.STORAGE_FAILURE, str(exc))

        try:
            recorded = self.index.write(
                lambda conn: record_instance(
                    self.index,
                    conn,
                    parsed,
                    trust=trust,
                    patient_local_id=local_id,
                    placeholder=placeholder,
                    blob_key=key,
                    provenance=provenance,
                    principal=principal,
                    replace=replace,
                )
            )
        except PatientMismatchError as exc:
            self._forget_blob(key)
            return rejected(RejectReason.PATIENT_MISMATCH, str(exc))
        except IndexUnavailable as exc:
            self._forget_blob(key)
            return rejected(RejectReason.STORAGE_FAILURE, str(exc))
        except Exception as exc:
            # A concurrent writer stored the same SOP Instance UID first: report as it stands now.
            again = self.index.instance_digest(parsed.sop_instance_uid)
            if again is not None:
                if again[0] == parsed.sha256:
                    return self._result(
                        Outcome.DUPLICATE, parsed, "stored concurrently with identical content"
                    )
                self._forget_blob(key)
                return rejected(RejectReason.CONFLICT, "stored concurrently with different content")
            self._forget_blob(key)
            log.exception("index write failed")
            return rejected(
                RejectReason.STORAGE_FAILURE, f"index write failed: {type(exc).__name__}"
            )

        if recorded.replaced_blob_key and recorded.replaced_blob_key != key:
            self._forget_blob(recorded.replaced_blob_key)
        INGEST_BYTES.labels(provenance.channel.value).inc(parsed.size)
        outcome = Outcome.REPLACED if recorded.replaced_blob_key else Outcome.STORED
        return self._result(outcome, parsed, "")

    def _forget_blob(self, key: str) -> None:
        """Delete a blob we wrote unless an index row (ours or a concurrent one) uses it."""
        try:
            if not self.index.blob_referenced(key):
                self.store.delete(key)
        except Exception:
            log.warning(
                "could not remove an unindexed blob; `solent check --repair` will", exc_info=True
            )

    @staticmethod
    def _result(outcome: Outcome, parsed: ParsedInstance, message: str) -> StoreResult:
        return StoreResult(
            outcome,
            sop_class_uid=parsed.sop_class_uid,
            sop_instance_uid=parsed.sop_instance_uid,
            study_uid=parsed.study_uid,
            series_uid=parsed.series_uid,
            message=message,
        )
