"""Instances held for identity reconciliation (issue 11): filed under no patient, one row
each, and a regional work-queue item that names both sides for the person who decides."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, insert, select

from solent.index import identity as identity_store
from solent.index import schema as t
from solent.index.sql import now

#: Work-queue kind of an instance held for identity reconciliation.
HELD = "ingest-held-for-reconciliation"


@dataclass(frozen=True, slots=True)
class HeldInstance:
    sop_uid: str
    series_uid: str
    study_uid: str
    sha256: str
    path: str  # the blob key of the kept copy
    sender: str
    trust: str  # the sender's, and the issuer of the patient the instance names
    local_id: str
    holder_pk: int | None  # the record that holds the UID
    reason: str


def record_held(conn: Connection, held: HeldInstance) -> int | None:
    """Add the held row and its work item (no trust: only regional administrators see it);
    the item's id, or None when the same bytes are held already (sent again)."""
    h = t.held_instance.c
    if conn.execute(
        select(h.work_item).where(h.sop_uid == held.sop_uid, h.sha256 == held.sha256)
    ).first():
        return None
    row = identity_store.get_patient(conn, held.holder_pk) if held.holder_pk is not None else None
    filed = f"record {row['local_id']} of {row['issuer']}" if row else "another record"
    item = identity_store.add_work_item(
        conn,
        kind=HELD,
        detail=(
            f"{held.sender} (trust {held.trust}) sent SOP Instance UID {held.sop_uid} of study "
            f"{held.study_uid} naming patient {held.local_id} of {held.trust}; "
            f"{held.reason.split(';')[0]}: {filed}. Held at {held.path}, filed under no "
            "patient, until a person decides"
        ),
    )
    conn.execute(
        insert(t.held_instance).values(
            at=now(),
            sop_uid=held.sop_uid,
            series_uid=held.series_uid,
            study_uid=held.study_uid,
            sha256=held.sha256,
            path=held.path,
            sender=held.sender[:200],
            sender_trust=held.trust,
            patient_issuer=held.trust,
            patient_id=held.local_id,
            holder_pk=held.holder_pk,
            reason=held.reason,
            work_item=item,
            status="held",
        )
    )
    return item
