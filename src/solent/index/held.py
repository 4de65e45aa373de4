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
#: ``held_instance.kind`` of an instance from outside the consortium, and the work-queue kind
#: of its study (R28): one item per study, raised for the receiving trust's stewards.
OUTSIDE = "outside"
OUTSIDE_ITEM = "outside-study-to-reconcile"


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
    kind: str | None = None  # OUTSIDE, or None: a UID conflict
    # As the instance carried them (R28: what the steward reconciles from).
    original_issuer: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    accession_number: str | None = None
    modality: str | None = None


def _conflict_item(conn: Connection, held: HeldInstance) -> int:
    """The regional item of a UID conflict (no trust: only regional administrators see it)."""
    row = identity_store.get_patient(conn, held.holder_pk) if held.holder_pk is not None else None
    filed = f"record {row['local_id']} of {row['issuer']}" if row else "another record"
    return identity_store.add_work_item(
        conn,
        kind=HELD,
        detail=(
            f"{held.sender} (trust {held.trust}) sent SOP Instance UID {held.sop_uid} of study "
            f"{held.study_uid} naming patient {held.local_id} of {held.trust}; "
            f"{held.reason.split(';')[0]}: {filed}. Held at {held.path}, filed under no "
            "patient, until a person decides"
        ),
    )


def _outside_item(conn: Connection, held: HeldInstance) -> int:
    """One item per outside study (the same detail for each of its instances: added once),
    raised for the receiving trust, whose stewards reconcile it."""
    named = held.local_id + (f" ({held.original_issuer})" if held.original_issuer else "")
    return identity_store.add_work_item(
        conn,
        kind=OUTSIDE_ITEM,
        issuer=held.trust,
        detail=(
            f"outside study {held.study_uid} from {held.sender} naming patient {named}, "
            f"{held.patient_name or 'no name'}: held, seen by nobody, until reconciled to a "
            "patient record (GET /api/identity/imports, `solent identity imports`)"
        ),
    )


def record_held(conn: Connection, held: HeldInstance) -> int | None:
    """Add the held row and its work item; the item's id, or None when the same bytes are
    held already (sent again)."""
    h = t.held_instance.c
    if conn.execute(
        select(h.work_item).where(h.sop_uid == held.sop_uid, h.sha256 == held.sha256)
    ).first():
        return None
    item = _outside_item(conn, held) if held.kind == OUTSIDE else _conflict_item(conn, held)
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
            kind=held.kind,
            original_issuer=held.original_issuer,
            patient_name=held.patient_name,
            patient_birth_date=held.patient_birth_date,
            patient_sex=held.patient_sex,
            study_date=held.study_date,
            study_description=held.study_description,
            accession_number=held.accession_number,
            modality=held.modality,
        )
    )
    return item


def held_rows(
    conn: Connection,
    status: str | None = None,
    *,
    kind: str | None = None,
    study_uid: str | None = None,
) -> list[dict[str, Any]]:
    """Held instances, newest first; ``status`` one of held, released, discarded; ``kind``
    OUTSIDE for outside studies, else UID conflicts (issue 11)."""
    h = t.held_instance.c
    q = select(t.held_instance).order_by(h.pk.desc())
    if status is not None:
        q = q.where(h.status == status)
    q = q.where(h.kind == kind) if kind is not None else q.where(h.kind.is_(None))
    if study_uid is not None:
        q = q.where(h.study_uid == study_uid)
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
    """Held -> released or discarded, with who, when and why, and its work item resolved
    (an outside study's once none of its instances is held any more); False (nothing
    written) when someone decided it already."""
    h = t.held_instance.c
    done = conn.execute(
        update(t.held_instance)
        .where(h.pk == pk, h.status == "held")
        .values(status=status, resolved_by=actor[:200], resolved_at=now(), resolution=resolution)
    )
    if not done.rowcount:
        return False
    item = conn.execute(select(h.work_item).where(h.pk == pk)).scalar()
    if (
        item is not None
        and not conn.execute(
            select(h.pk).where(h.work_item == item, h.status == "held").limit(1)
        ).first()
    ):
        identity_store.resolve_work_item(conn, int(item), actor)
    return True
