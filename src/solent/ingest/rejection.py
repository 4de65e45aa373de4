"""An IOCM rejection note as ingest files it (R56; the index side is
``solent.index.rejection``): the instances it lists leave every query and retrieve in the note's
own transaction, and one audit record (DICOM Instances Deleted) names them."""

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
            },
        ),
    )
    log.info(
        "rejection note %s (%s): %d instance(s) withdrawn, %d listed not found",
        parsed.sop_instance_uid,
        note.meaning,
        done.count,
        len(done.not_found),
    )
