"""SQL of study edits (R57): a study moved to another patient record, series moved, a study
split or two merged, an accession corrected.

A move is the study row's ``patient_pk`` changed, as an A40 merge does for all of a record's
studies: series, instances and metadata follow the study row, so every door (QIDO, C-FIND,
WADO, C-GET/C-MOVE, FHIR, the viewer) files the study under its new record at once, and the
outgoing header patch (services/outgoing_identity.py) puts the stored identity in Original
Attributes Sequence. Each edit is a ``study_edit`` row; the service decides who may.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, exists, func, insert, or_, select, update

from solent.index import schema as t
from solent.index.sql import now

MOVE = "move"
MOVE_SERIES = "move-series"
MOVES = (MOVE, MOVE_SERIES)
SPLIT = "split"  # series of a study into a new study of the same record
MERGE = "merge"  # every series of a study into another study of the same record
REGROUPS = (SPLIT, MERGE)
#: Kinds that put series into ``new_study_uid``: that study goes out under its own UID.
RECEIVING = (MOVE_SERIES, SPLIT, MERGE)
ACCESSION = "accession"
REQUESTED, DONE, REFUSED = "requested", "done", "refused"


def add_edit(conn: Connection, *, series_uids: list[str] | None = None, **values: Any) -> int:
    """The edit row, and for a split or merge one row per series it moves."""
    res = conn.execute(insert(t.study_edit).values(requested_at=now(), **values))
    pk = int(res.inserted_primary_key[0])  # type: ignore[index]
    if series_uids:
        conn.execute(
            insert(t.study_edit_series), [{"edit_pk": pk, "series_uid": u} for u in series_uids]
        )
    return pk


def get_edit(conn: Connection, pk: int) -> dict[str, Any] | None:
    """The edit row, with ``series_uids``: the series a split or merge moved (else [])."""
    row = conn.execute(select(t.study_edit).where(t.study_edit.c.pk == pk)).mappings().first()
    return None if row is None else _with_series(conn, dict(row))


def _with_series(conn: Connection, edit: dict[str, Any]) -> dict[str, Any]:
    es = t.study_edit_series.c
    uids = conn.execute(
        select(es.series_uid).where(es.edit_pk == edit["pk"]).order_by(es.series_uid)
    ).scalars()
    edit["series_uids"] = [str(u) for u in uids] if edit["kind"] in REGROUPS else []
    return edit


def edits(
    conn: Connection, *, study_uid: str | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    c = t.study_edit.c
    q = select(t.study_edit).order_by(c.pk)
    if study_uid is not None:  # edits of the study, and series moved into it
        q = q.where(or_(c.study_uid == study_uid, c.new_study_uid == study_uid))
    if status is not None:
        q = q.where(c.status == status)
    return [_with_series(conn, dict(r)) for r in conn.execute(q).mappings()]


def pending_for(conn: Connection, study_uid: str) -> dict[str, Any] | None:
    c = t.study_edit.c
    row = (
        conn.execute(
            select(t.study_edit).where(c.study_uid == study_uid, c.status == REQUESTED).limit(1)
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


def lock(
    conn: Connection,
    study_uids: Iterable[str | None],
    patient_pks: Iterable[Any],
    *,
    accession_issuer: str | None = None,
) -> None:
    """Serialise edits of these studies and records (PostgreSQL row locks; SQLite has one
    writer at a time already). Taken first in an edit's applying transaction, so its checks
    read what a concurrent edit of the same studies committed: on READ COMMITTED two
    transactions could otherwise both pass their checks and both write (two merges each into
    the other, two splits emptying a study, a split of a study moved to another record). The
    records first, as a patient merge takes them before it refiles their studies, then the
    studies; each by key, so two edits never wait for each other in a circle. A study deleted
    meanwhile is not locked (there is none): the checks then find it gone. The records' lock
    (NO KEY UPDATE) waits for a patient merge or another edit of them, not for an ingest
    filing a new study under them; the studies' (UPDATE) also makes an ingest into them wait.

    ``accession_issuer``: the edit gives a study an accession of this trust, which no other
    stored study may carry; edits giving one of that trust's accessions take turns (the trust
    row's NO KEY UPDATE lock, which ingest's references to the trust do not wait for)."""
    if conn.dialect.name != "postgresql":
        return
    p, st = t.patient.c, t.study.c
    pks = sorted({int(pk) for pk in patient_pks if pk is not None})
    if pks:
        q = select(p.pk).where(p.pk.in_(pks)).order_by(p.pk)
        conn.execute(q.with_for_update(key_share=True)).all()  # FOR NO KEY UPDATE
    uids = sorted({uid for uid in study_uids if uid})
    if uids:
        conn.execute(
            select(st.pk).where(st.study_uid.in_(uids)).order_by(st.pk).with_for_update()
        ).all()
    if accession_issuer is not None:
        tr = t.trust.c
        q = select(tr.code).where(tr.code == accession_issuer)
        conn.execute(q.with_for_update(key_share=True)).all()  # FOR NO KEY UPDATE


def decide(conn: Connection, pk: int, status: str, by: str) -> bool:
    """Settle a requested edit; False when it was decided meanwhile (nothing changed)."""
    c = t.study_edit.c
    res = conn.execute(
        update(t.study_edit)
        .where(c.pk == pk, c.status == REQUESTED)
        .values(status=status, decided_by=by, decided_at=now())
    )
    return bool(res.rowcount)


def mark_reversed(conn: Connection, pk: int, by_pk: int) -> None:
    c = t.study_edit.c
    conn.execute(update(t.study_edit).where(c.pk == pk).values(reversed_by=by_pk))


def refile_study(conn: Connection, study_pk: int, from_pk: int, to_pk: int) -> bool:
    """File the study under ``to_pk``; False when it is no longer under ``from_pk``. The UPDATE
    locks the study row: an ingest into the study waits for it (its instance rows hang off the
    study row, so they are under the new record whichever commits first)."""
    c = t.study.c
    res = conn.execute(
        update(t.study)
        .where(c.pk == study_pk, c.patient_pk == from_pk)
        .values(patient_pk=to_pk, updated_at=now())
    )
    return bool(res.rowcount)


def set_accession(
    conn: Connection,
    study_pk: int,
    old: tuple[str | None, str | None],
    new: tuple[str, str | None],
) -> bool:
    """Set (accession, issuer); False when the study's accession changed meanwhile."""
    c = t.study.c
    res = conn.execute(
        update(t.study)
        .where(
            c.pk == study_pk,
            _same(c.accession_number, old[0]),
            _same(c.accession_issuer, old[1]),
        )
        .values(accession_number=new[0], accession_issuer=new[1], updated_at=now())
    )
    return bool(res.rowcount)


def _same(column: Any, value: str | None) -> Any:
    return column.is_(None) if value is None else column == value


def moved_away_from(conn: Connection, study_uid: str, issuer: str, local_id: str) -> bool:
    """A person moved this study away from the record (issuer, local_id): instances that still
    name that record (the modality's worklist entry was wrong too) follow the study."""
    c = t.study_edit.c
    return bool(
        conn.execute(
            select(
                exists().where(
                    c.study_uid == study_uid,
                    c.kind.in_(MOVES),
                    c.status == DONE,
                    c.from_issuer == issuer,
                    c.from_local_id == local_id,
                )
            )
        ).scalar()
    )


def study_overrides(conn: Connection, study_uid: str) -> dict[str, str]:
    """Study attributes outgoing headers must say instead of the stored ones, by keyword: the
    accession a person corrected, and for a study that received a series moved from another
    study, its own Study Instance UID (and accession: the moved series leaves its old order).
    Empty for a study no edit touched, so it goes out as stored."""
    c, s = t.study_edit.c, t.study.c
    done = and_(c.study_uid == study_uid, c.status == DONE)
    corrected = exists().where(done, c.kind == ACCESSION)
    received = exists().where(c.new_study_uid == study_uid, c.kind.in_(RECEIVING), c.status == DONE)
    row = conn.execute(
        select(s.accession_number, corrected, received).where(s.study_uid == study_uid)
    ).first()
    if row is None or not (row[1] or row[2]):
        return {}
    out = {"AccessionNumber": str(row[0] or "")}
    if row[2]:
        out["StudyInstanceUID"] = study_uid
    return out


def series_in(conn: Connection, series_uid: str) -> dict[str, Any] | None:
    """The series with the UID of the study it is in (``study_uid``)."""
    se, st = t.series.c, t.study.c
    row = (
        conn.execute(
            select(t.series, st.study_uid)
            .join(t.study, st.pk == se.study_pk)
            .where(se.series_uid == series_uid)
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


def series_moved(conn: Connection, series_uid: str, from_study_uid: str) -> bool:
    """A person moved this series out of ``from_study_uid`` (alone, or in a split or merge):
    late instances of it that still name that study follow the series."""
    c, es = t.study_edit.c, t.study_edit_series.c
    alone = exists().where(
        c.series_uid == series_uid,
        c.study_uid == from_study_uid,
        c.kind == MOVE_SERIES,
        c.status == DONE,
    )
    regrouped = exists().where(
        es.series_uid == series_uid,
        es.edit_pk == c.pk,
        c.study_uid == from_study_uid,
        c.kind.in_(REGROUPS),
        c.status == DONE,
    )
    return bool(conn.execute(select(or_(alone, regrouped))).scalar())


def merged_into(conn: Connection, study_uid: str) -> str | None:
    """The study this one was merged into (a done merge not reversed), if any: a new series
    that still names a merged study goes where its other series went."""
    c = t.study_edit.c
    uid = conn.execute(
        select(c.new_study_uid)
        .where(
            c.study_uid == study_uid,
            c.kind == MERGE,
            c.status == DONE,
            c.reverses.is_(None),
            c.reversed_by.is_(None),
        )
        .order_by(c.pk.desc())
        .limit(1)
    ).scalar()
    return None if uid is None else str(uid)


def series_of(conn: Connection, study_pk: int) -> list[str]:
    se = t.series.c
    rows = conn.execute(select(se.series_uid).where(se.study_pk == study_pk).order_by(se.pk))
    return [str(u) for u in rows.scalars()]


#: The study attributes a new study takes from the one it is made from (split, merge reversal).
STUDY_ATTRS = (
    "trust_code",
    "study_date",
    "study_time",
    "accession_number",
    "accession_issuer",
    "study_id",
    "study_description",
    "referring_physician",
)


def new_study(conn: Connection, attrs: dict[str, Any], study_uid: str, patient_pk: int) -> int:
    """A study row with ``attrs`` (STUDY_ATTRS) under ``patient_pk``, empty until ``recount``."""
    stamp = now()
    res = conn.execute(
        insert(t.study).values(
            study_uid=study_uid,
            patient_pk=patient_pk,
            modalities="",
            num_series=0,
            num_instances=0,
            size_bytes=0,
            created_at=stamp,
            updated_at=stamp,
            **{k: attrs.get(k) for k in STUDY_ATTRS},
        )
    )
    return int(res.inserted_primary_key[0])  # type: ignore[index]


def new_study_like(
    conn: Connection, template: dict[str, Any], study_uid: str, patient_pk: int
) -> int:
    """A study row for a moved series: the template's study attributes, under ``patient_pk``,
    without its accession (the series leaves that order), empty until ``recount``."""
    attrs = {k: template[k] for k in STUDY_ATTRS if not k.startswith("accession")}
    return new_study(conn, attrs, study_uid, patient_pk)


def refile_series(conn: Connection, series_pk: int, from_study_pk: int, to_study_pk: int) -> bool:
    """Put the series in another study; False when it is no longer in ``from_study_pk``."""
    se = t.series.c
    res = conn.execute(
        update(t.series)
        .where(se.pk == series_pk, se.study_pk == from_study_pk)
        .values(study_pk=to_study_pk)
    )
    return bool(res.rowcount)


def recount(conn: Connection, study_pk: int) -> int:
    """Make the study's totals true again after a series left or came; deletes a study left
    without series (nothing lists an empty study). Returns its number of series."""
    se, st, ins = t.series.c, t.study.c, t.instance.c
    series = conn.execute(
        select(se.pk, se.modality, se.num_instances).where(se.study_pk == study_pk)
    ).all()
    if not series:
        conn.execute(delete(t.study).where(st.pk == study_pk))
        return 0
    size = conn.execute(
        select(func.coalesce(func.sum(ins.size_bytes), 0)).where(
            ins.series_pk.in_([r.pk for r in series])
        )
    ).scalar_one()
    modalities: list[str] = []
    for r in series:
        if r.modality and r.modality not in modalities:
            modalities.append(str(r.modality))
    conn.execute(
        update(t.study)
        .where(st.pk == study_pk)
        .values(
            num_series=len(series),
            num_instances=sum(int(r.num_instances) for r in series),
            size_bytes=int(size),
            modalities="\\".join(modalities),
            updated_at=now(),
        )
    )
    return len(series)


def order_patient(conn: Connection, accession: str, issuer: str) -> tuple[str, str] | None:
    """(patient issuer, patient ID) of the order (accession, issuer), if one is known."""
    o = t.orders.c
    row = conn.execute(
        select(o.patient_issuer, o.patient_id).where(
            o.accession_number == accession, o.accession_issuer == issuer
        )
    ).first()
    return None if row is None else (str(row[0]), str(row[1]))


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
