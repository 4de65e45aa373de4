"""SQL of background work: change-feed cursors, the jobs they enqueue, fixity check records.

On PostgreSQL the jobs live in procrastinate's tables (same database). The dispatcher enqueues
through procrastinate's own SQL function ``procrastinate_defer_jobs_v1`` inside the transaction
that advances the cursor, which is what makes "each event becomes its jobs exactly once" hold
across nodes: the cursor row is locked, and a crash before commit enqueues nothing.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from solent.index import schema as t
from solent.index.sql import now

if TYPE_CHECKING:
    from solent.index.sql import Index

QUEUE = "solent"


@dataclass(frozen=True)
class FeedEvent:
    seq: int
    kind: str
    study_uid: str | None
    series_uid: str | None
    sop_instance_uid: str | None
    trust_code: str | None = None
    patient_pk: int | None = None


@dataclass(frozen=True)
class BlobCheck:
    at: datetime
    sop_instance_uid: str
    blob_key: str
    ok: bool
    detail: str
    worker: str


def _ensure_cursor(conn: Connection, dialect: str, consumer: str, *, from_head: bool) -> None:
    """A consumer's cursor, made at the start of the feed (or at its head: a consumer that
    concerns only what happens from now on, added to an archive with history)."""
    ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(t.feed_cursor)
    start = (
        conn.execute(select(func.coalesce(func.max(t.change_feed.c.seq), 0))).scalar_one()
        if from_head
        and conn.execute(
            select(t.feed_cursor.c.seq).where(t.feed_cursor.c.consumer == consumer)
        ).first()
        is None
        else 0
    )
    conn.execute(ins.values(consumer=consumer, seq=start).on_conflict_do_nothing())


def take_events(
    conn: Connection,
    dialect: str,
    consumer: str,
    kinds: Collection[str],
    *,
    limit: int,
    settle_seconds: float,
    from_head: bool = False,
) -> tuple[list[FeedEvent], int, int]:
    """Lock ``consumer``'s cursor and read the events after it: (wanted events, old, new seq).

    Only events older than ``settle_seconds`` are taken, in sequence order, stopping at the first
    younger one: on PostgreSQL a sequence number is drawn before its transaction commits, so a
    just-visible seq may still have a lower, uncommitted neighbour the cursor must not skip.
    The caller enqueues and then calls `advance` in the same transaction.
    """
    _ensure_cursor(conn, dialect, consumer, from_head=from_head)
    cursor = conn.execute(
        select(t.feed_cursor.c.seq).where(t.feed_cursor.c.consumer == consumer).with_for_update()
    ).scalar_one()
    cf = t.change_feed.c
    rows = conn.execute(
        select(
            cf.seq,
            cf.at,
            cf.kind,
            cf.study_uid,
            cf.series_uid,
            cf.sop_instance_uid,
            cf.trust_code,
            cf.patient_pk,
        )
        .where(cf.seq > cursor)
        .order_by(cf.seq)
        .limit(limit)
    ).all()
    cutoff = now() - timedelta(seconds=settle_seconds)
    taken: list[FeedEvent] = []
    new = cursor
    for r in rows:
        at = r.at if r.at.tzinfo is not None else r.at.replace(tzinfo=cutoff.tzinfo)
        if settle_seconds > 0 and at > cutoff:
            break
        new = r.seq
        if r.kind in kinds:
            taken.append(
                FeedEvent(
                    r.seq,
                    r.kind,
                    r.study_uid,
                    r.series_uid,
                    r.sop_instance_uid,
                    r.trust_code,
                    None if r.patient_pk is None else int(r.patient_pk),
                )
            )
    return taken, cursor, new


def advance(conn: Connection, consumer: str, seq: int) -> None:
    conn.execute(t.feed_cursor.update().where(t.feed_cursor.c.consumer == consumer).values(seq=seq))


def feed_position(index: Index, consumer: str) -> tuple[int, int]:
    """(this consumer's cursor, the newest event's seq)."""
    with index.read() as conn:
        cursor = conn.execute(
            select(t.feed_cursor.c.seq).where(t.feed_cursor.c.consumer == consumer)
        ).scalar()
        head = conn.execute(select(func.max(t.change_feed.c.seq))).scalar()
    return int(cursor or 0), int(head or 0)


def defer_jobs(conn: Connection, jobs: list[tuple[str, dict[str, Any]]]) -> None:
    """Enqueue (task name, arguments) jobs in procrastinate's queue, in ``conn``'s transaction."""
    if not jobs:
        return
    conn.execute(
        text(
            "SELECT procrastinate_defer_jobs_v1(ARRAY("
            " SELECT ROW(:queue, x.task, 0, NULL, NULL, x.args::jsonb, NULL)"
            "::procrastinate_job_to_defer_v1"
            " FROM unnest(CAST(:tasks AS varchar[]), CAST(:args AS text[])) AS x(task, args)))"
        ),
        {
            "queue": QUEUE,
            "tasks": [task for task, _ in jobs],
            "args": [json.dumps(args, sort_keys=True) for _, args in jobs],
        },
    )


def record_blob_check(
    index: Index, sop_instance_uid: str, blob_key: str, ok: bool, detail: str, worker: str
) -> None:
    index.write(
        lambda conn: conn.execute(
            insert(t.blob_check).values(
                at=now(),
                sop_instance_uid=sop_instance_uid,
                blob_key=blob_key,
                ok=ok,
                detail=detail,
                worker=worker,
            )
        ),
        relaxed=True,  # a record of a read: losing the last one in a crash only re-checks it
    )


def blob_checks(index: Index, sop_instance_uid: str | None = None) -> list[BlobCheck]:
    q = select(t.blob_check).order_by(t.blob_check.c.pk)
    if sop_instance_uid is not None:
        q = q.where(t.blob_check.c.sop_instance_uid == sop_instance_uid)
    with index.read() as conn:
        return [
            BlobCheck(r.at, r.sop_instance_uid, r.blob_key, r.ok, r.detail, r.worker)
            for r in conn.execute(q)
        ]


def job_counts(index: Index) -> dict[tuple[str, str], int]:
    """(task, status) -> jobs, from procrastinate's table (PostgreSQL only)."""
    with index.read() as conn:
        rows = conn.execute(
            text(
                "SELECT task_name, status::text AS status, count(*) AS n"
                " FROM procrastinate_jobs GROUP BY task_name, status"
            )
        ).all()
    return {(r.task_name, r.status): int(r.n) for r in rows}


@dataclass(frozen=True)
class JobFailure:
    """A job of the in-process queue that used all its attempts, to be recorded."""

    consumer: str
    seq: int
    task: str
    args: dict[str, Any]
    attempts: int
    error: str
    first_failed_at: datetime
    last_failed_at: datetime


@dataclass(frozen=True)
class FailedJob:
    id: int
    consumer: str
    seq: int
    task: str
    args: dict[str, Any]
    status: str  # failed | todo (retry asked) | doing | succeeded
    attempts: int
    last_error: str
    first_failed_at: datetime
    last_failed_at: datetime
    worker: str | None


def _failed_job(r: Any) -> FailedJob:
    return FailedJob(
        int(r.pk),
        r.consumer,
        int(r.seq),
        r.task,
        json.loads(r.args),
        r.status,
        int(r.attempts),
        r.last_error,
        r.first_failed_at,
        r.last_failed_at,
        r.worker,
    )


def record_failed_jobs(conn: Connection, failures: list[JobFailure]) -> list[int]:
    """Keep jobs that used all their attempts as "failed" (in the transaction that advances
    their consumer's cursor: a failure is recorded exactly when its event is acknowledged)."""
    ids = []
    for f in failures:
        ids.append(
            conn.execute(
                insert(t.failed_job)
                .values(
                    consumer=f.consumer,
                    seq=f.seq,
                    task=f.task,
                    args=json.dumps(f.args, sort_keys=True),
                    status="failed",
                    attempts=f.attempts,
                    last_error=f.error,
                    first_failed_at=f.first_failed_at,
                    last_failed_at=f.last_failed_at,
                )
                .returning(t.failed_job.c.pk)
            ).scalar_one()
        )
    return ids


def failed_jobs(index: Index, status: str | None, limit: int) -> list[FailedJob]:
    """Recorded failed jobs (and what became of them), newest first."""
    q = select(t.failed_job).order_by(t.failed_job.c.pk.desc()).limit(limit)
    if status is not None:
        q = q.where(t.failed_job.c.status == status)
    with index.read() as conn:
        return [_failed_job(r) for r in conn.execute(q)]


def failed_job_counts(index: Index) -> dict[tuple[str, str], int]:
    """(task, status) -> recorded failed jobs."""
    fj = t.failed_job.c
    with index.read() as conn:
        rows = conn.execute(
            select(fj.task, fj.status, func.count().label("n")).group_by(fj.task, fj.status)
        ).all()
    return {(r.task, r.status): int(r.n) for r in rows}


def queue_failed_job(conn: Connection, job_id: int, retryable: Collection[str]) -> str | None:
    """Ask for a failed job to run again ("todo") if its status is one of ``retryable``; its
    status before (None: no such job)."""
    fj = t.failed_job.c
    status = conn.execute(select(fj.status).where(fj.pk == job_id)).scalar()
    if status in retryable:
        conn.execute(
            t.failed_job.update().where(fj.pk == job_id).values(status="todo", worker=None)
        )
    return None if status is None else str(status)


def retry_waiting(index: Index, consumer: str) -> bool:
    """Whether an operator asked for a failed job of ``consumer`` to run again (a read: the
    follower asks at every poll, and takes the write lock only when there is one)."""
    fj = t.failed_job.c
    with index.read() as conn:
        q = select(fj.pk).where(fj.status == "todo", fj.consumer == consumer).limit(1)
        return conn.execute(q).first() is not None


def claim_failed_job(conn: Connection, consumer: str, worker: str) -> FailedJob | None:
    """The oldest job of ``consumer`` an operator asked to run again, now "doing" by
    ``worker`` (one write transaction: two processes never claim the same one)."""
    fj = t.failed_job.c
    row = conn.execute(
        select(t.failed_job)
        .where(fj.status == "todo", fj.consumer == consumer)
        .order_by(fj.pk)
        .limit(1)
    ).first()
    if row is None:
        return None
    conn.execute(t.failed_job.update().where(fj.pk == row.pk).values(status="doing", worker=worker))
    return _failed_job(row)


def finish_failed_job(
    conn: Connection, job_id: int, worker: str, error: str | None, at: datetime
) -> None:
    """The outcome of a retried job's run: "succeeded", or "failed" again with its error.
    Nothing when it is no longer ``worker``'s (an operator asked again meanwhile)."""
    fj = t.failed_job.c
    mine = t.failed_job.update().where(fj.pk == job_id, fj.status == "doing", fj.worker == worker)
    if error is None:
        conn.execute(
            mine.values(status="succeeded", attempts=fj.attempts + 1, worker=None, done_at=at)
        )
    else:
        conn.execute(
            mine.values(
                status="failed",
                attempts=fj.attempts + 1,
                worker=None,
                last_error=error,
                last_failed_at=at,
            )
        )


def doing_failed_jobs(index: Index) -> list[FailedJob]:
    with index.read() as conn:
        rows = conn.execute(select(t.failed_job).where(t.failed_job.c.status == "doing"))
        return [_failed_job(r) for r in rows]


def release_failed_job(conn: Connection, job_id: int, worker: str) -> None:
    """Put a job ``worker`` left "doing" (it died running it) back to "todo"."""
    fj = t.failed_job.c
    conn.execute(
        t.failed_job.update()
        .where(fj.pk == job_id, fj.status == "doing", fj.worker == worker)
        .values(status="todo", worker=None)
    )


def feed_row(conn: Connection, seq: int) -> dict[str, Any] | None:
    """One change-feed event with its detail decoded (a job names the event it follows)."""
    row = conn.execute(select(t.change_feed).where(t.change_feed.c.seq == seq)).mappings().first()
    if row is None:
        return None
    out = dict(row)
    out["detail"] = json.loads(row["detail"]) if row["detail"] else {}
    return out
