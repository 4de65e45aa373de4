"""Key objects and presentation states in the index (R30; the DICOM side is
``solent.dicom.key_objects``): the instances each references, kept at ingest, and which of
those a rejection note has since withdrawn. Only objects still stored are listed (a rejection
note may withdraw the key object itself)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, and_, delete, insert, select

from solent.dicom.key_objects import KeyObject
from solent.domain.principal import Principal
from solent.index import schema as t


def author_of(principal: Principal) -> str:
    """Who stored a key object, as kept and matched: kind and name (a user's or node's trust
    of the moment left out, so the author finds it whichever trust they sign in for)."""
    return f"{principal.kind}:{principal.name}"[:200]


def record_references(
    conn: Connection,
    sop_uid: str,
    series_uid: str,
    study_uid: str,
    obj: KeyObject,
    stored_by: str,
) -> None:
    """Keep what a stored key object references (a replaced object's old list goes)."""
    k = t.key_object_reference
    conn.execute(delete(k).where(k.c.object_sop_uid == sop_uid))
    if not obj.references:
        return
    conn.execute(
        insert(k),
        [
            {
                "object_sop_uid": sop_uid,
                "object_series_uid": series_uid,
                "object_study_uid": study_uid,
                "kind": obj.kind,
                "title": obj.title,
                "stored_by": stored_by[:200],
                "ref_study_uid": ref_study,
                "ref_series_uid": ref_series,
                "ref_sop_uid": ref_sop,
            }
            for ref_study, ref_series, ref_sop in obj.references
        ],
    )


def _select() -> Any:
    """Each reference of a still-stored key object, with the rejection (if any) of the instance
    it points at."""
    k, r, i = t.key_object_reference.c, t.rejected_instance.c, t.instance.c
    joined = t.key_object_reference.join(t.instance, i.sop_instance_uid == k.object_sop_uid).join(
        t.rejected_instance, and_(r.sop_uid == k.ref_sop_uid), isouter=True
    )
    return select(
        k.object_sop_uid,
        k.object_series_uid,
        k.object_study_uid,
        k.kind,
        k.title,
        k.stored_by,
        k.ref_study_uid,
        k.ref_series_uid,
        k.ref_sop_uid,
        r.code.label("withdrawn_code"),
        r.note_uid.label("withdrawn_note"),
        r.at.label("withdrawn_at"),
        r.patient_issuer.label("withdrawn_issuer"),
        r.patient_id.label("withdrawn_patient_id"),
    ).select_from(joined)


def study_key_objects(conn: Connection, study_uid: str) -> list[dict[str, Any]]:
    """One row per reference of every key object stored in this study."""
    k = t.key_object_reference.c
    q = _select().where(k.object_study_uid == study_uid).order_by(k.object_sop_uid, k.pk)
    return [dict(row) for row in conn.execute(q).mappings()]


def withdrawn_references_by(conn: Connection, stored_by: str) -> list[dict[str, Any]]:
    """The references to withdrawn instances of key objects ``stored_by`` stored."""
    k, r = t.key_object_reference.c, t.rejected_instance.c
    q = (
        _select()
        .where(k.stored_by == stored_by, r.code.is_not(None))
        .order_by(r.at.desc(), k.object_sop_uid, k.pk)
    )
    return [dict(row) for row in conn.execute(q).mappings()]


def referencing(conn: Connection, sop_uids: Iterable[str]) -> list[dict[str, Any]]:
    """The still-stored key objects that reference any of these instances, with who stored
    them (one entry per object)."""
    uids = sorted(set(sop_uids))
    if not uids:
        return []
    k, i = t.key_object_reference.c, t.instance.c
    q = (
        select(k.object_sop_uid, k.object_study_uid, k.kind, k.title, k.stored_by)
        .select_from(
            t.key_object_reference.join(t.instance, i.sop_instance_uid == k.object_sop_uid)
        )
        .where(k.ref_sop_uid.in_(uids))
        .distinct()
        .order_by(k.object_sop_uid)
    )
    return [dict(row) for row in conn.execute(q).mappings()]
