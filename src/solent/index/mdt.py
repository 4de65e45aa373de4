"""SQL of MDT meetings: meetings, their ordered items (patient + studies), outcomes, prefetch
progress and the current presenter."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, insert, or_, select, update

from solent.index import schema as t
from solent.index.sql import now


def add_meeting(
    conn: Connection,
    *,
    title: str,
    date: str,
    team: str,
    coordinator: str,
    items: list[tuple[str, str, list[str]]],
    time: str | None = None,
    base: str | None = None,
) -> int:
    """Insert a meeting and its items (issuer, local_id, study UIDs) in order; returns its id."""
    res = conn.execute(
        insert(t.mdt_meeting).values(
            title=title,
            date=date,
            team=team,
            coordinator=coordinator,
            presenter=None,
            prefetch_state="pending",
            prefetch_done=0,
            prefetch_total=0,
            created_at=now(),
            time=time,
            prefetch_base=base,
        )
    )
    assert res.inserted_primary_key is not None
    meeting = int(res.inserted_primary_key[0])
    for position, (issuer, local_id, studies) in enumerate(items, start=1):
        conn.execute(
            insert(t.mdt_item).values(
                meeting_pk=meeting,
                position=position,
                patient_issuer=issuer,
                patient_id=local_id,
                study_uids=json.dumps(studies),
                prefetch_state="pending",
            )
        )
    return meeting


def get_meeting(conn: Connection, meeting: int) -> dict[str, Any] | None:
    row = conn.execute(select(t.mdt_meeting).where(t.mdt_meeting.c.pk == meeting)).first()
    return dict(row._mapping) if row else None


def meetings_on(conn: Connection, date: str | None, limit: int = 200) -> list[dict[str, Any]]:
    m = t.mdt_meeting.c
    q = select(t.mdt_meeting).order_by(m.date, m.pk).limit(limit)
    if date:
        q = q.where(m.date == date)
    return [dict(r) for r in conn.execute(q).mappings()]


def items_of(conn: Connection, meeting: int) -> list[dict[str, Any]]:
    i = t.mdt_item.c
    q = select(t.mdt_item).where(i.meeting_pk == meeting).order_by(i.position, i.pk)
    out = []
    for r in conn.execute(q).mappings():
        row = dict(r)
        row["study_uids"] = list(json.loads(row["study_uids"]))
        out.append(row)
    return out


def set_outcome(conn: Connection, item: int, text: str, by: str) -> None:
    conn.execute(
        update(t.mdt_item)
        .where(t.mdt_item.c.pk == item)
        .values(outcome=text, outcome_by=by, outcome_at=now())
    )


def set_prefetch(
    conn: Connection, meeting: int, state: str, done: int | None = None, total: int | None = None
) -> None:
    values: dict[str, Any] = {"prefetch_state": state}
    if done is not None:
        values["prefetch_done"] = done
    if total is not None:
        values["prefetch_total"] = total
    conn.execute(update(t.mdt_meeting).where(t.mdt_meeting.c.pk == meeting).values(**values))


def claim_prefetch(conn: Connection, meeting: int, *, before: datetime | None = None) -> bool:
    """Mark the prefetch running unless it already is (one run per meeting at a time, across
    nodes); with ``before``, only if the last one ended before then (the warming before the
    start, claimed by one node)."""
    m = t.mdt_meeting.c
    q = update(t.mdt_meeting).where(m.pk == meeting, m.prefetch_state != "running")
    if before is not None:
        before = before.astimezone(UTC)  # stored in UTC: SQLite compares the text
        q = q.where(or_(m.prefetched_at.is_(None), m.prefetched_at < before))
    res = conn.execute(q.values(prefetch_state="running", prefetch_done=0, prefetch_total=0))
    if res.rowcount:
        items = update(t.mdt_item).where(t.mdt_item.c.meeting_pk == meeting)
        conn.execute(items.values(prefetch_state="pending"))
    return bool(res.rowcount)


def finish_prefetch(conn: Connection, meeting: int, state: str, at: datetime) -> None:
    conn.execute(
        update(t.mdt_meeting)
        .where(t.mdt_meeting.c.pk == meeting)
        .values(prefetch_state=state, prefetched_at=at.astimezone(UTC))
    )


def set_item_prefetch(conn: Connection, item: int, state: str, warmed: int | None) -> None:
    conn.execute(
        update(t.mdt_item)
        .where(t.mdt_item.c.pk == item)
        .values(prefetch_state=state, prefetch_warmed=warmed)
    )


def meetings_starting(conn: Connection, date: str) -> list[dict[str, Any]]:
    """Meetings of ``date`` with a start time (the sweep picks those about to start)."""
    m = t.mdt_meeting.c
    q = select(t.mdt_meeting).where(m.date == date, m.time.is_not(None)).order_by(m.time, m.pk)
    return [dict(r) for r in conn.execute(q).mappings()]


_UNSET: Any = object()


def lock_live(conn: Connection, meeting: int) -> tuple[str | None, int] | None:
    """(presenter, last event number) of a meeting's room, its row locked until commit (on
    PostgreSQL: rounds of one room from several nodes are numbered one after the other)."""
    m = t.mdt_meeting.c
    q = select(m.presenter, m.live_seq).where(m.pk == meeting).with_for_update()
    row = conn.execute(q).first()
    return (row[0], int(row[1] or 0)) if row else None


def save_live(
    conn: Connection,
    meeting: int,
    *,
    seq: int | None = _UNSET,
    view: str | None = _UNSET,
    presenter: str | None = _UNSET,
) -> None:
    """Keep the room's last event number, latest view event (JSON) and/or presenter, for nodes
    that open it later."""
    values: dict[str, Any] = {}
    if seq is not _UNSET:
        values["live_seq"] = seq
    if view is not _UNSET:
        values["live_view"] = view
    if presenter is not _UNSET:
        values["presenter"] = presenter
    if values:
        conn.execute(update(t.mdt_meeting).where(t.mdt_meeting.c.pk == meeting).values(**values))


def get_live(conn: Connection, meeting: int) -> tuple[str | None, str | None, int] | None:
    """(presenter, latest view event JSON, last event number) of a meeting; None when there is
    no such meeting."""
    m = t.mdt_meeting.c
    row = conn.execute(select(m.presenter, m.live_view, m.live_seq).where(m.pk == meeting)).first()
    return (row[0], row[1], int(row[2] or 0)) if row else None
