"""What ingest says about one instance. Adapters turn these into DICOM / HTTP statuses."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: nothing written
    REPLACED = "replaced"  # same SOP Instance UID, different bytes, policy "replace"
    REJECTED = "rejected"
    #: Kept for identity reconciliation, filed under no patient: its study, series or SOP
    #: Instance UID is filed under a record the sender may not see. Adapters answer it
    #: exactly as STORED (ok, no message), so the sender learns nothing of that record.
    HELD = "held"


class RejectReason(StrEnum):
    MALFORMED = "malformed"  # not parseable as DICOM / truncated / inconsistent pixel data
    MISSING_ATTRIBUTE = "missing-attribute"
    INVALID_UID = "invalid-uid"
    CONFLICT = "conflict"  # same SOP Instance UID with other content (policy reject)
    PATIENT_MISMATCH = "patient-mismatch"  # study or series already filed under another patient
    UNKNOWN_TRUST = "unknown-trust"
    NOT_AN_INSTANCE = "not-an-instance"  # e.g. a DICOMDIR
    NOT_PERMITTED = "not-permitted"
    STORAGE_FAILURE = "storage-failure"
    TOO_LARGE = "too-large"


@dataclass(frozen=True, slots=True)
class StoreResult:
    outcome: Outcome
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    reason: RejectReason | None = None
    message: str = ""
    #: Stored, but not everything the sender asked for happened (an IOCM retention note under
    #: legal hold or awaiting approval): adapters answer with their warning status and this.
    warning: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is not Outcome.REJECTED

    @classmethod
    def rejected(
        cls,
        reason: RejectReason,
        message: str,
        *,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> StoreResult:
        return cls(
            Outcome.REJECTED,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            reason=reason,
            message=message,
        )
