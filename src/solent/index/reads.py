"""Index reads behind DICOMweb retrieval: where an instance's bytes, frames and metadata are.

WADO-RS serves metadata and frames from what ingest precomputed, so these reads are the whole
cost of a /metadata or /frames request: one query for the instance list, one for the JSON.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any

from sqlalchemy import Select, bindparam, null, select

from solent.domain.records import StoredInstance
from solent.index import schema as t
from solent.index.sql import Index


def _instances(with_frames: bool) -> Select[tuple[object, ...]]:
    i, se, st = t.instance.c, t.series.c, t.study.c
    cols = [
        i.pk,
        st.study_uid,
        se.series_uid,
        i.sop_instance_uid,
        i.sop_class_uid,
        i.transfer_syntax_uid,
        i.blob_key,
        i.size_bytes,
        i.sha256,
        i.rows,
        i.columns,
        i.number_of_frames,
        i.frames if with_frames else null().label("frames"),
        i.trust_code,
    ]
    return (
        select(*cols)
        .select_from(
            t.instance.join(t.series, i.series_pk == se.pk).join(t.study, se.study_pk == st.pk)
        )
        .order_by(se.series_number, se.pk, i.instance_number, i.pk)
    )


def _stored(r: Any) -> StoredInstance:
    return StoredInstance(*r)


def find_instances(
    index: Index,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    *,
    with_frames: bool = False,
) -> list[StoredInstance]:
    """Instances of a study, a series of it, or one instance of that series; [] if none."""
    q = _find(with_frames, series_uid is not None, sop_instance_uid is not None)
    params = {"study": study_uid, "series": series_uid, "sop": sop_instance_uid}
    with index.read() as conn:
        return [_stored(r) for r in conn.execute(q, params).all()]


@cache
def _find(with_frames: bool, by_series: bool, by_sop: bool) -> Select[tuple[object, ...]]:
    """``find_instances``' statement, built once per shape: every /frames request runs it,
    and building and cache-keying it anew cost more than SQLite's answer."""
    q = _instances(with_frames).where(t.study.c.study_uid == bindparam("study"))
    if by_series:
        q = q.where(t.series.c.series_uid == bindparam("series"))
    if by_sop:
        q = q.where(t.instance.c.sop_instance_uid == bindparam("sop"))
    return q


def find_instance_by_uid(index: Index, sop_instance_uid: str) -> StoredInstance | None:
    """One instance by its SOP Instance UID alone (WADO-URI links carry all three UIDs)."""
    q = _instances(True).where(t.instance.c.sop_instance_uid == sop_instance_uid)
    with index.read() as conn:
        r = conn.execute(q).first()
    return _stored(r) if r else None


def find_metadata(
    index: Index,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> list[tuple[str, str, str, str, bytes]]:
    """(study, series, SOP Instance UID, sha256, zlib DICOM JSON) per instance, one query.

    Only the columns /metadata needs, so a 300-instance series costs one small query.
    """
    i, se, st, m = t.instance.c, t.series.c, t.study.c, t.instance_metadata.c
    q = (
        select(st.study_uid, se.series_uid, i.sop_instance_uid, i.sha256, m.json_z)
        .select_from(
            t.instance.join(t.series, i.series_pk == se.pk)
            .join(t.study, se.study_pk == st.pk)
            .join(t.instance_metadata, m.instance_pk == i.pk)
        )
        .where(st.study_uid == study_uid)
        .order_by(se.series_number, se.pk, i.instance_number, i.pk)
    )
    q = _narrowed(q, series_uid, sop_instance_uid)
    with index.read() as conn:
        return [(r[0], r[1], r[2], r[3], bytes(r[4])) for r in conn.execute(q).all()]


def _narrowed(q: Any, series_uid: str | None, sop_instance_uid: str | None) -> Any:
    """``q`` (over instance + series) cut to one series and/or one instance when given."""
    if series_uid is not None:
        q = q.where(t.series.c.series_uid == series_uid)
    if sop_instance_uid is not None:
        q = q.where(t.instance.c.sop_instance_uid == sop_instance_uid)
    return q


def find_hashes(
    index: Index,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> list[str]:
    """Content hashes in /metadata order: enough for its ETag (and a cached answer)."""
    i, se, st = t.instance.c, t.series.c, t.study.c
    q = (
        select(i.sha256)
        .select_from(
            t.instance.join(t.series, i.series_pk == se.pk).join(t.study, se.study_pk == st.pk)
        )
        .where(st.study_uid == study_uid)
        .order_by(se.series_number, se.pk, i.instance_number, i.pk)
    )
    q = _narrowed(q, series_uid, sop_instance_uid)
    with index.read() as conn:
        return [str(r[0]) for r in conn.execute(q).all()]


def iter_metadata(
    index: Index, instance_pks: Sequence[int], *, page: int = 500
) -> Iterator[tuple[int, bytes]]:
    """(instance pk, zlib DICOM JSON) in the order of ``instance_pks``, read in pages."""
    m = t.instance_metadata.c
    for start in range(0, len(instance_pks), page):
        chunk = list(instance_pks[start : start + page])
        with index.read() as conn:
            rows = dict(
                conn.execute(select(m.instance_pk, m.json_z).where(m.instance_pk.in_(chunk))).all()
            )
        for pk in chunk:
            doc = rows.get(pk)
            if doc is not None:
                yield pk, bytes(doc)
