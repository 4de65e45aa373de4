"""An IOCM rejection note as ingest files it (R56; the index side is
``solent.index.rejection``): the instances it lists leave every query and retrieve in the note's
own transaction, and one audit record (DICOM Instances Deleted) names them and the key images
users had marked on them (R30), which stay, flagged as withdrawn, for their authors.

A note titled 113039 "Data Retention Policy Expired" withdraws nothing by itself (R43, R44):
while a legal hold covers its study it is refused; otherwise it waits as a retention deletion
for a second person's approval (``solent.services.retention``). The note itself is stored
either way, and the sender is told in the store's warning."""

from __future__ import annotations

import logging

from sqlalchemy import Connection

from solent.dicom.parse import ParsedInstance
from solent.dicom.rejection_note import RejectionNote
from solent.domain.principal import Principal, PrincipalKind
from solent.index.rejection import apply_rejection
from solent.index.retention import add_deletion, holds_covering, owner_of_instance, study_owner
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail, audit_fields

log = logging.getLogger(__name__)

#: The title whose withdrawal is a deletion at the end of retention (R44): held for approval.
RETENTION_EXPIRED = "113039"


def apply_note(
    conn: Connection,
    audit: AuditTrail,
    principal: Principal,
    parsed: ParsedInstance,
    note: RejectionNote,
) -> str:
    """Withdraw what the note lists in its own study, in ``conn``'s transaction (a retention
    note: refuse it under a legal hold, or keep it for approval). Returns the warning the
    sender is given when the note is stored but does not withdraw what it lists now."""
    if note.code == RETENTION_EXPIRED:
        return _retention_note(conn, audit, principal, parsed, note)
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
    return ""


def _retention_note(
    conn: Connection,
    audit: AuditTrail,
    principal: Principal,
    parsed: ParsedInstance,
    note: RejectionNote,
) -> str:
    study_uid, note_uid = parsed.study_uid, parsed.sop_instance_uid
    refs = [(se, sop) for st, se, sop in note.references if st == study_uid and sop != note_uid]
    elsewhere = [sop for st, _, sop in note.references if st != study_uid]
    # The note was filed in this transaction: into its own study, or into the study its study
    # was merged into (R57), which then holds what it lists.
    owner = study_owner(conn, study_uid) or owner_of_instance(conn, note_uid)
    if owner is None:
        raise RuntimeError(f"retention note {note_uid} is not filed in any study")
    detail: dict[str, object] = {
        "iocm": note.code,
        "reason": note.meaning,
        "note": note_uid,
        "rejected": {},
        "listed": len(refs),
        "not_found": elsewhere,
    }
    holds = holds_covering(conn, owner)
    if holds:
        detail["legal_hold"] = holds
        detail["refused"] = "the study is under legal hold: nothing is withdrawn"
        audit.append_in(
            conn,
            audit_fields(
                principal, AuditAction.DELETE, AuditOutcome.DENIED, study_uid=study_uid,
                detail=detail,
            ),
        )  # fmt: skip
        log.warning(
            "retention note %s refused: study %s is under legal hold %s",
            note_uid,
            study_uid,
            ", ".join(str(h["id"]) for h in holds),
        )
        # The first 64 characters are a C-STORE Error Comment: they must say it all.
        return "legal hold: note stored, nothing withdrawn (R43)"
    pk = add_deletion(
        conn,
        note_uid=note_uid,
        code=note.code,
        owner=owner,
        requested_by=principal.describe(),
        requester_user=principal.name if principal.kind is PrincipalKind.USER else None,
        refs=refs,
    )
    detail["pending_approval"] = pk
    audit.append_in(
        conn,
        audit_fields(principal, AuditAction.DELETE, study_uid=study_uid, detail=detail),
    )
    log.info(
        "retention note %s: deletion %d of %d instance(s) awaits a second person's approval",
        note_uid,
        pk,
        len(refs),
    )
    return (
        f"retention deletion {pk} awaits approval; nothing withdrawn yet. The note is stored; "
        f"its {len(refs)} instance(s) are withdrawn once a second person approves (R44)"
    )
