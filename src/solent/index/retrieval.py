"""Index reads behind C-MOVE, C-GET and Storage Commitment: which stored instances match."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, select

from solent.domain.records import StoredInstanceRef
from solent.index import schema as t
from solent.index.sql import Index


def _base() -> Select[Any]:
    i, se, st = t.instance.c, t.series.c, t.study.c
    return (
        select(
            i.sop_class_uid,
            i.sop_instance_uid,
            i.transfer_syntax_uid,
            i.blob_key,
            i.size_bytes,
            st.study_uid,
            se.series_uid,
        )
        .select_from(
            t.instance.join(t.series, i.series_pk == se.pk).join(t.study, se.study_pk == st.pk)
        )
        .order_by(st.pk, se.series_number, se.pk, i.instance_number, i.pk)
    )


def locate_instances(
    index: Index,
    *,
    patient_id: str | None = None,
    patient_issuer: str | None = None,
    study_uids: Sequence[str] = (),
    series_uids: Sequence[str] = (),
    sop_instance_uids: Sequence[str] = (),
    limit: int = 65535,
) -> list[StoredInstanceRef]:
    """Instances matching the unique keys of a retrieve; an empty key set matches nothing."""
    if not (patient_id or study_uids or series_uids or sop_instance_uids):
        return []
    q = _base()
    if patient_id:
        p = t.patient.c
        q = q.join(t.patient, t.study.c.patient_pk == p.pk).where(p.local_id == patient_id)
        if patient_issuer:
            q = q.where(p.issuer == patient_issuer)
    if study_uids:
        q = q.where(t.study.c.study_uid.in_(list(study_uids)))
    if series_uids:
        q = q.where(t.series.c.series_uid.in_(list(series_uids)))
    if sop_instance_uids:
        q = q.where(t.instance.c.sop_instance_uid.in_(list(sop_instance_uids)))
    with index.read() as conn:
        rows = conn.execute(q.limit(limit)).all()
    return [StoredInstanceRef(**dict(r._mapping)) for r in rows]


def stored_sop_classes(
    index: Index, sop_instance_uids: Sequence[str]
) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (SOP Class UID, Study Instance UID) of those durably stored and
    indexed: the study is what the access decision is taken on."""
    out: dict[str, tuple[str, str]] = {}
    uids = list(dict.fromkeys(sop_instance_uids))
    i, se, st = t.instance.c, t.series.c, t.study.c
    for start in range(0, len(uids), 500):
        chunk = uids[start : start + 500]
        with index.read() as conn:
            rows = conn.execute(
                select(i.sop_instance_uid, i.sop_class_uid, st.study_uid)
                .select_from(
                    t.instance.join(t.series, i.series_pk == se.pk).join(
                        t.study, se.study_pk == st.pk
                    )
                )
                .where(i.sop_instance_uid.in_(chunk))
            ).all()
        out.update({r.sop_instance_uid: (r.sop_class_uid, r.study_uid) for r in rows})
    return out


def held_sop_uids(index: Index, sop_instance_uids: Sequence[str], sender_trust: str) -> set[str]:
    """Of these SOP Instance UIDs, those a node of ``sender_trust`` sent that are held for
    identity reconciliation (kept durably, filed under no patient, not yet decided)."""
    h = t.held_instance.c
    uids = list(dict.fromkeys(sop_instance_uids))
    out: set[str] = set()
    for start in range(0, len(uids), 500):
        chunk = uids[start : start + 500]
        with index.read() as conn:
            rows = conn.execute(
                select(h.sop_uid).where(
                    h.sop_uid.in_(chunk), h.sender_trust == sender_trust, h.status == "held"
                )
            ).all()
        out.update(r.sop_uid for r in rows)
    return out
