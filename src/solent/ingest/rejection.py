"""An IOCM rejection note as ingest files it (R56; the index side is
``solent.index.rejection``): the instances it lists leave every query and retrieve in the note's
own transaction, and one audit record (DICOM Instances Deleted) names them and the key images
users had marked on them (R30), which stay, flagged as withdrawn, for their authors."""

from __future__ import annotations

import logging

from sqlalchemy import Connection

from solent.dicom.parse import ParsedInstance
from solent.dicom.rejection_note import RejectionNote
from solent.domain.principal import Principal
from solent.index.rejection import apply_rejection
from solent.services.audit import AuditAction, AuditTrail, audit_fields

log = logging.getLogger(__name__)


def apply_note(
    conn: Connection,
    audit: AuditTrail,
    principal: Principal,
    parsed: ParsedInstance,
    note: RejectionNote,
) -> None:
    """Withdraw what the note lists in its own study, in ``conn``'s transaction."""
    done = apply_rejection(
        conn, note, parsed.sop_instance_uid, parsed.study_uid, principal.describe()
    )
    audit.append_in(
        conn,
        audit_fields(
            principal,
            AuditAction.DELETE,
            study_uid=parsed.study_uid,
            detail={
                "iocm": note.code,
                "reason": note.meaning,
                "note": parsed.sop_instance_uid,
                "rejected": done.series,
                "not_found": done.not_found,
                "key_images_flagged": done.key_images,
                "key_objects_flagged": done.key_objects,
            },
        ),
    )
    if done.key_images or done.key_objects:
        log.warning(
            "rejection note %s withdrew instances that %d key image(s) and %d key object(s) or "
            "presentation state(s) point at (authors: %s)",
            parsed.sop_instance_uid,
            len(done.key_images),
            len(done.key_objects),
            ", ".join(
                sorted(
                    {f"user:{k['by']}" for k in done.key_images}
                    | {str(k["by"]) for k in done.key_objects}
                )
            ),
        )
    log.info(
        "rejection note %s (%s): %d instance(s) withdrawn, %d listed not found",
        parsed.sop_instance_uid,
        note.meaning,
        done.count,
        len(done.not_found),
    )
