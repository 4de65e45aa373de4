"""SQL of the viewer: a person's studies with body part and report status, series with frame
counts, key images, recently opened patients, live break-glass grants.

No access rule here: the services pass the patient records the caller may see.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update

from solent.index import schema as t
from solent.index.sql import now

RECENT_KEEP = 20  # recent patients remembered per user


def body_parts(conn: Connection, study_pks: Iterable[int]) -> dict[int, str]:
    """The first non-empty body part of each study's series (the study level has none)."""
    keys = sorted(set(study_pks))
    if not keys:
        return {}
    se = t.series.c
    q = (
        select(se.study_pk, se.body_part)
        .where(se.study_pk.in_(keys), func.coalesce(se.body_part, "") != "")
        .order_by(se.study_pk, se.series_number, se.pk)
    )
    out: dict[int, str] = {}
    for pk, part in conn.execute(q):
        out.setdefault(int(pk), str(part))
    return out


def current_reports(
    conn: Connection, studies: Iterable[tuple[str | None, str]]
) -> dict[tuple[str, str], str]:
    """(accession, issuer) -> status code (OBR-25) of the current report version.

    ``studies`` are (accession, issuer) pairs; the issuer of a study without an explicit
    accession issuer is its trust (as the inbox matches reports to studies).
    """
    pairs = {(a, i) for a, i in studies if a}
    if not pairs:
        return {}
    r = t.report.c
    accessions = sorted({a for a, _ in pairs if a})
    q = select(r.accession_number, r.accession_issuer, r.status).where(
        r.accession_number.in_(accessions), r.superseded.is_(False)
    )
    return {(str(a), str(i)): str(s) for a, i, s in conn.execute(q) if (a, i) in pairs}


def report_versions(conn: Connection, accession: str, issuer: str) -> list[dict[str, Any]]:
    r = t.report.c
    q = (
        select(t.report)
        .where(r.accession_number == accession, r.accession_issuer == issuer)
        .order_by(r.version)
    )
    return [dict(row) for row in conn.execute(q).mappings()]


def series_with_frames(conn: Connection, study_pk: int) -> list[dict[str, Any]]:
    """Series of a study in display order, each with its total number of frames."""
    se, i = t.series.c, t.instance.c
    frames = (
        select(i.series_pk, func.sum(func.coalesce(i.number_of_frames, 0)).label("frames"))
        .group_by(i.series_pk)
        .subquery()
    )
    q = (
        select(
            se.pk,
            se.series_uid,
            se.modality,
            se.series_number,
            se.series_description,
            se.body_part,
            se.num_instances,
            func.coalesce(frames.c.frames, 0).label("frames"),
        )
        .select_from(t.series.outerjoin(frames, frames.c.series_pk == se.pk))
        .where(se.study_pk == study_pk)
        .order_by(se.series_number, se.pk)
    )
    return [dict(row) for row in conn.execute(q).mappings()]


def instance_frames(conn: Connection, study_uid: str, series_uid: str, sop_uid: str) -> int | None:
    """Frames of an instance of this study and series; None when it is not stored there."""
    s, se, i = t.study.c, t.series.c, t.instance.c
    q = (
        select(i.number_of_frames)
        .select_from(
            t.instance.join(t.series, i.series_pk == se.pk).join(t.study, se.study_pk == s.pk)
        )
        .where(s.study_uid == study_uid, se.series_uid == series_uid, i.sop_instance_uid == sop_uid)
    )
    row = conn.execute(q).first()
    return None if row is None else int(row[0] or 0)


# -- key images ---------------------------------------------------------------------------------


def _with_withdrawal(outer: bool) -> Any:
    """Key images with the IOCM rejection (if any) of the instance each points at (R30)."""
    k, r = t.key_image.c, t.rejected_instance.c
    joined = t.key_image.join(
        t.rejected_instance,
        and_(r.sop_uid == k.sop_uid, r.study_uid == k.study_uid),
        isouter=outer,
    )
    return select(
        t.key_image,
        r.code.label("withdrawn_code"),
        r.note_uid.label("withdrawn_note"),
        r.at.label("withdrawn_at"),
        r.patient_issuer.label("withdrawn_issuer"),
        r.patient_id.label("withdrawn_patient_id"),
    ).select_from(joined)


def key_images(conn: Connection, study_uid: str) -> list[dict[str, Any]]:
    """The study's key images; ``withdrawn_code`` is set where a rejection note withdrew the
    instance a key image points at."""
    k = t.key_image.c
    q = _with_withdrawal(outer=True).where(k.study_uid == study_uid).order_by(k.pk)
    return [dict(row) for row in conn.execute(q).mappings()]


def withdrawn_key_images(conn: Connection, created_by: str) -> list[dict[str, Any]]:
    """The key images ``created_by`` marked on instances a rejection note has since withdrawn,
    newest withdrawal first, with the patient record the instance was filed under."""
    k, r = t.key_image.c, t.rejected_instance.c
    q = _with_withdrawal(outer=False).where(k.created_by == created_by).order_by(r.at.desc(), k.pk)
    return [dict(row) for row in conn.execute(q).mappings()]


def key_images_on(
    conn: Connection, study_uid: str, sop_uids: Iterable[str]
) -> list[dict[str, Any]]:
    """Key images of a study that point at any of these instances (id and author)."""
    uids = sorted(set(sop_uids))
    if not uids:
        return []
    k = t.key_image.c
    q = (
        select(k.pk, k.sop_uid, k.created_by)
        .where(k.study_uid == study_uid, k.sop_uid.in_(uids))
        .order_by(k.pk)
    )
    return [dict(row) for row in conn.execute(q).mappings()]


def add_key_image(conn: Connection, values: dict[str, Any]) -> dict[str, Any]:
    row = {**values, "created_at": now()}
    pk = conn.execute(insert(t.key_image).values(**row)).inserted_primary_key
    assert pk is not None
    return {**row, "pk": int(pk[0])}


def get_key_image(conn: Connection, study_uid: str, pk: int) -> dict[str, Any] | None:
    k = t.key_image.c
    row = conn.execute(select(t.key_image).where(k.pk == pk, k.study_uid == study_uid)).first()
    return dict(row._mapping) if row else None


def delete_key_image(conn: Connection, pk: int) -> None:
    conn.execute(delete(t.key_image).where(t.key_image.c.pk == pk))


# -- recent patients ----------------------------------------------------------------------------


def touch_recent(conn: Connection, user: str, issuer: str, local_id: str) -> None:
    """Remember that ``user`` opened this record now; keep the last RECENT_KEEP."""
    r = t.viewer_recent.c
    key = (r.user_name == user, r.patient_issuer == issuer, r.patient_id == local_id)
    done = conn.execute(update(t.viewer_recent).where(*key).values(opened_at=now()))
    if not done.rowcount:
        conn.execute(
            insert(t.viewer_recent).values(
                user_name=user, patient_issuer=issuer, patient_id=local_id, opened_at=now()
            )
        )
    old = (
        select(r.opened_at)
        .where(r.user_name == user)
        .order_by(r.opened_at.desc())
        .offset(RECENT_KEEP)
        .limit(1)
        .scalar_subquery()
    )
    conn.execute(delete(t.viewer_recent).where(r.user_name == user, r.opened_at <= old))


def recent(conn: Connection, user: str) -> list[tuple[str, str]]:
    r = t.viewer_recent.c
    q = (
        select(r.patient_issuer, r.patient_id)
        .where(r.user_name == user)
        .order_by(r.opened_at.desc())
        .limit(RECENT_KEEP)
    )
    return [(str(a), str(b)) for a, b in conn.execute(q)]


# -- break-glass --------------------------------------------------------------------------------


def live_grant(
    conn: Connection, user: str, patient_pks: Iterable[int], at: datetime
) -> tuple[int, datetime] | None:
    """The user's break-glass grant on one of these records that lasts longest, if any."""
    keys = sorted(set(patient_pks))
    if not keys:
        return None
    g = t.break_glass.c
    q = (
        select(g.pk, g.expires_at)
        .where(g.user_name == user, g.patient_pk.in_(keys), g.expires_at > at)
        .order_by(g.expires_at.desc())
        .limit(1)
    )
    row = conn.execute(q).first()
    return None if row is None else (int(row[0]), row[1])


def patient_pks(conn: Connection, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """(issuer, local_id) -> patient pk, for the records that exist."""
    wanted = set(keys)
    if not wanted:
        return {}
    p = t.patient.c
    cond = or_(*(and_(p.issuer == a, p.local_id == b) for a, b in sorted(wanted)))
    return {
        (str(a), str(b)): int(pk)
        for pk, a, b in conn.execute(select(p.pk, p.issuer, p.local_id).where(cond))
    }
