"""SQL of MDT outcomes (R32): the radiology input recorded against the studies reviewed, and
the discrepancy notices addressed to a report's primary reporter."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from sqlalchemy import Connection, insert, or_, select, update

from solent.index import schema as t
from solent.index.sql import now


def add_outcome(
    conn: Connection, values: dict[str, Any], reviewed: list[tuple[str, list[str]]]
) -> int:
    """Insert one recording and the studies (with series) it reviewed; returns its id."""
    res = conn.execute(insert(t.mdt_outcome).values(**values, recorded_at=now()))
    pk = int(res.inserted_primary_key[0])  # type: ignore[index]
    for study_uid, series in reviewed:
        conn.execute(
            insert(t.mdt_outcome_study).values(
                outcome_pk=pk, study_uid=study_uid, series_uids=json.dumps(series)
            )
        )
    return pk


def outcomes(
    conn: Connection,
    *,
    item: int | None = None,
    study_uids: Collection[str] | None = None,
    pk: int | None = None,
) -> list[dict[str, Any]]:
    """The recordings for an MDT item, those that reviewed any of some studies, or one, oldest
    first, each with ``reviewed`` ([(study UID, series UIDs)]) and its ``notices``."""
    o, s = t.mdt_outcome.c, t.mdt_outcome_study.c
    q = select(t.mdt_outcome).order_by(o.recorded_at, o.pk)
    if item is not None:
        q = q.where(o.item_pk == item)
    if study_uids is not None:
        q = q.where(o.pk.in_(select(s.outcome_pk).where(s.study_uid.in_(list(study_uids)))))
    if pk is not None:
        q = q.where(o.pk == pk)
    rows = [dict(r) for r in conn.execute(q).mappings()]
    pks = [int(r["pk"]) for r in rows]
    reviewed: dict[int, list[tuple[str, list[str]]]] = {pk: [] for pk in pks}
    notices: dict[int, list[dict[str, Any]]] = {pk: [] for pk in pks}
    if pks:
        q_studies = select(t.mdt_outcome_study).where(s.outcome_pk.in_(pks)).order_by(s.pk)
        for study in conn.execute(q_studies):
            reviewed[int(study.outcome_pk)].append(
                (str(study.study_uid), json.loads(study.series_uids))
            )
        n = t.reporter_notice.c
        q_notices = select(t.reporter_notice).where(n.outcome_pk.in_(pks)).order_by(n.pk)
        for notice in conn.execute(q_notices).mappings():
            notices[int(notice["outcome_pk"])].append(dict(notice))
    for r in rows:
        r["reviewed"] = reviewed[int(r["pk"])]
        r["notices"] = notices[int(r["pk"])]
    return rows


def current_report(conn: Connection, accession: str, issuer: str) -> dict[str, Any] | None:
    """The report version in force for (accession, issuer), or None."""
    r = t.report.c
    q = (
        select(t.report)
        .where(
            r.accession_number == accession,
            r.accession_issuer == issuer,
            r.superseded.is_(False),
        )
        .order_by(r.version.desc())
        .limit(1)
    )
    row = conn.execute(q).mappings().first()
    return None if row is None else dict(row)


def add_notice(conn: Connection, values: dict[str, Any]) -> int:
    res = conn.execute(insert(t.reporter_notice).values(**values, created_at=now(), status="open"))
    return int(res.inserted_primary_key[0])  # type: ignore[index]


def _notice_query() -> Any:
    n, o = t.reporter_notice.c, t.mdt_outcome.c
    return select(
        t.reporter_notice,
        o.meeting_pk,
        o.item_pk,
        o.opinion,
        o.plan,
        o.discrepancy_note,
        o.recorded_by,
        o.recorded_trust,
        o.recorded_at,
    ).select_from(t.reporter_notice.join(t.mdt_outcome, n.outcome_pk == o.pk))


def notices_for(
    conn: Connection,
    trusts: Collection[str],
    reporter_id: str,
    *,
    team: bool,
    status: str | None,
) -> list[dict[str, Any]]:
    """Notices at ``trusts`` addressed to ``reporter_id``, and (``team``) those addressed to no
    one in particular (the report named no reporter ID), newest first, with their outcome."""
    n = t.reporter_notice.c
    whom = n.reporter_id == reporter_id.lower()
    if team:
        whom = or_(whom, n.reporter_id.is_(None))
    q = _notice_query().where(n.trust.in_(list(trusts)), whom)
    if status is not None:
        q = q.where(n.status == status)
    q = q.order_by(n.created_at.desc(), n.pk.desc())
    return [dict(r) for r in conn.execute(q).mappings()]


def get_notice(conn: Connection, pk: int) -> dict[str, Any] | None:
    row = conn.execute(_notice_query().where(t.reporter_notice.c.pk == pk)).mappings().first()
    return None if row is None else dict(row)


def acknowledge(conn: Connection, pk: int, by: str, response: str) -> bool:
    """Close an open notice; False when it was acknowledged already."""
    n = t.reporter_notice.c
    done = conn.execute(
        update(t.reporter_notice)
        .where(n.pk == pk, n.status == "open")
        .values(status="acknowledged", acknowledged_by=by, acknowledged_at=now(), response=response)
    )
    return bool(done.rowcount)
