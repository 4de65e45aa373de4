"""Instances held for identity reconciliation (issue 11): filed under no patient, one row
each, and a regional work-queue item that names both sides for the person who decides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update

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
    calling_ae: str | None = None


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
            calling_ae=held.calling_ae,
        )
    )
    return item


def held_rows(conn: Connection, status: str | None = None) -> list[dict[str, Any]]:
    """Held instances, newest first; ``status`` one of held, released, discarded."""
    h = t.held_instance.c
    q = select(t.held_instance).order_by(h.pk.desc())
    if status is not None:
        q = q.where(h.status == status)
    return [dict(r) for r in conn.execute(q).mappings()]


def held_row(conn: Connection, pk: int) -> dict[str, Any] | None:
    r = conn.execute(select(t.held_instance).where(t.held_instance.c.pk == pk)).mappings().first()
    return dict(r) if r else None


def owners(
    conn: Connection, study_uid: str | None, series_uid: str | None, sop_uid: str
) -> set[int]:
    """The patient records the held instance's study, series and SOP Instance UIDs are filed
    under now (several when they disagree): whom it would be filed with."""
    st, se, ic = t.study.c, t.series.c, t.instance.c
    found: set[int] = set()
    if study_uid:
        found |= {
            int(r[0]) for r in conn.execute(select(st.patient_pk).where(st.study_uid == study_uid))
        }
    if series_uid:
        found |= {
            int(r[0])
            for r in conn.execute(
                select(st.patient_pk)
                .join(t.series, se.study_pk == st.pk)
                .where(se.series_uid == series_uid)
            )
        }
    found |= {
        int(r[0])
        for r in conn.execute(
            select(st.patient_pk)
            .join(t.series, se.study_pk == st.pk)
            .join(t.instance, ic.series_pk == se.pk)
            .where(ic.sop_instance_uid == sop_uid)
        )
    }
    return found


def settle(conn: Connection, pk: int, status: str, actor: str, resolution: str) -> bool:
    """Held -> released or discarded, with who, when and why, and its work item resolved;
    False (nothing written) when someone decided it already."""
    h = t.held_instance.c
    done = conn.execute(
        update(t.held_instance)
        .where(h.pk == pk, h.status == "held")
        .values(status=status, resolved_by=actor[:200], resolved_at=now(), resolution=resolution)
    )
    if not done.rowcount:
        return False
    item = conn.execute(select(h.work_item).where(h.pk == pk)).scalar()
    if item is not None:
        identity_store.resolve_work_item(conn, int(item), actor)
    return True
