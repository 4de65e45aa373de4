"""Where jobs wait and who runs them: procrastinate on PostgreSQL, in-process on SQLite.

Both follow the change feed with the same consumers (`tasks.CONSUMERS`) and run the same task
functions (`tasks.TASKS`); only the claiming differs. procrastinate (maintained, PostgreSQL
only, no extra server) claims each job for exactly one worker across all nodes with
SELECT ... FOR UPDATE SKIP LOCKED and retries with exponential backoff. The in-process runner is
the embedded default's: one node, a thread per consumer (a consumer waiting out a retry holds
up only its own feed), the cursor advanced after the tasks ran. A job that used all its attempts
is kept in the index as "failed" (``failed_job``) in the transaction that advances the cursor,
so both queues give an operator the same `solent jobs list --status failed` and `jobs retry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import Connection

from solent.errors import InvalidInput, NotFound
from solent.index.jobs import (
    QUEUE,
    JobFailure,
    advance,
    claim_failed_job,
    defer_jobs,
    doing_failed_jobs,
    failed_job_counts,
    failed_jobs,
    feed_position,
    finish_failed_job,
    job_counts,
    queue_failed_job,
    record_failed_jobs,
    release_failed_job,
    retry_waiting,
    take_events,
)
from solent.index.sql import PG_KEEPALIVE, now
from solent.jobs.tasks import CONSUMERS, JOBS_RUN, TASKS, Consumer, TaskContext, worker_name

if TYPE_CHECKING:
    from solent.index.sql import Index
    from solent.services.availability import Notice
    from solent.services.prior_prefetch import PriorPrefetch
    from solent.services.ris_notify import RisNotice
    from solent.settings import Settings
    from solent.storage import BlobStore

log = logging.getLogger(__name__)

BATCH = 500  # events turned into jobs per transaction
MAX_ATTEMPTS = 6


@dataclass(frozen=True)
class JobRow:
    id: int
    task: str
    status: str
    attempts: int
    args: dict[str, Any]


class JobQueue(Protocol):
    backend: str

    def start(self) -> None:
        """Follow the change feed and run jobs in background threads of this process."""

    def stop(self) -> None: ...

    def dispatch(self) -> int:
        """Turn new change-feed events into jobs; how many jobs."""

    def work(self, *, until_idle: bool) -> None:
        """Run jobs in the foreground (`solent jobs work`); ``until_idle``: return when none."""

    def list_jobs(self, status: str | None, limit: int) -> list[JobRow]: ...

    def retry(self, job_id: int) -> None: ...

    def stats(self) -> dict[str, Any]: ...


def _feed_stats(index: Index, consumers: tuple[Consumer, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in consumers:
        cursor, head = feed_position(index, c.name)
        out[c.name] = {"cursor": cursor, "feed_head": head, "backlog": head - cursor}
    return out


class _QueueCollector:
    """/metrics: jobs by task and status (whole cluster, from the queue) and each consumer's
    change-feed backlog, read at scrape time from the queue this process runs."""

    queue: JobQueue | None = None

    def collect(self) -> Iterator[Metric]:
        queue = self.queue
        if queue is None:
            return
        try:
            stats = queue.stats()
        except Exception:
            log.warning("job statistics unavailable for /metrics", exc_info=True)
            return
        jobs = GaugeMetricFamily(
            "solent_jobs",
            "Background jobs in the queue by task and status",
            labels=["task", "status"],
        )
        for task, by_status in stats.get("jobs", {}).items():
            for status, n in by_status.items():
                jobs.add_metric([task, status], n)
        backlog = GaugeMetricFamily(
            "solent_jobs_feed_backlog",
            "Change-feed events a consumer has not turned into jobs yet",
            labels=["consumer"],
        )
        for consumer, feed in stats.get("feed", {}).items():
            backlog.add_metric([consumer], feed["backlog"])
        failed = GaugeMetricFamily(
            "solent_jobs_failed",
            "Background jobs that used all their attempts and wait for an operator "
            "(`solent jobs retry`); alert when above 0",
        )
        failed.add_metric([], sum(s.get("failed", 0) for s in stats.get("jobs", {}).values()))
        yield jobs
        yield backlog
        yield failed


COLLECTOR = _QueueCollector()
REGISTRY.register(COLLECTOR)


class _Follower:
    """A daemon thread calling ``step`` every ``interval`` seconds until stopped."""

    def __init__(self, name: str, step: Any, interval: float) -> None:
        self._stop = threading.Event()
        self._step = step
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:
                log.exception("background step failed; trying again")
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)


class ProcrastinateQueue:
    """Jobs in procrastinate's tables of the index's PostgreSQL database."""

    backend = "procrastinate"

    def __init__(
        self,
        index: Index,
        store: BlobStore,
        *,
        concurrency: int = 1,
        max_attempts: int = MAX_ATTEMPTS,
        poll_seconds: float = 1.0,
        settle_seconds: float = 2.0,
        stalled_seconds: float = 30.0,
        consumers: tuple[Consumer, ...] = CONSUMERS,
        settings: Settings | None = None,
        notify: Callable[[str, Notice], int] | None = None,
        prefetch: PriorPrefetch | None = None,
        tell_ris: Callable[[RisNotice], tuple[str, str]] | None = None,
    ) -> None:
        import procrastinate

        self.index = index
        self.consumers = consumers
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.settle_seconds = settle_seconds
        self.stalled_seconds = stalled_seconds
        conninfo = index.url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(
                conninfo=conninfo, min_size=1, max_size=4, kwargs=dict(PG_KEEPALIVE)
            )
        )
        ctx = TaskContext(index, store, worker_name(), settings, notify, prefetch, tell_ris)
        # procrastinate counts retries after the first run (and 0 means "no limit").
        retry: procrastinate.RetryStrategy | bool = (
            procrastinate.RetryStrategy(max_attempts=max_attempts - 1, exponential_wait=2)
            if max_attempts > 1
            else False
        )
        for name, fn in TASKS.items():
            self.app.task(name=name, queue=QUEUE, retry=retry)(_runner(name, fn, ctx))
        self._dispatcher: _Follower | None = None
        self._worker: threading.Thread | None = None
        self._worker_loop: asyncio.AbstractEventLoop | None = None
        self._worker_task: asyncio.Task[Any] | None = None

    # -- feed -> jobs ---------------------------------------------------------------------

    def dispatch(self) -> int:
        total = 0
        for consumer in self.consumers:
            while True:
                moved, enqueued = self.index.write(partial(self._batch, consumer=consumer))
                total += enqueued
                if not moved:
                    break
        return total

    def _batch(self, conn: Connection, consumer: Consumer) -> tuple[bool, int]:
        events, old, new = take_events(
            conn,
            "postgresql",
            consumer.name,
            consumer.kinds,
            limit=BATCH,
            settle_seconds=max(self.settle_seconds, consumer.settle_seconds),
            from_head=consumer.from_head,
        )
        jobs = consumer.batch_jobs(events)
        defer_jobs(conn, jobs)
        advance(conn, consumer.name, new)
        return new != old, len(jobs)

    # -- running --------------------------------------------------------------------------

    def _worker_options(self, *, wait: bool) -> dict[str, Any]:
        return {
            "queues": [QUEUE],
            "concurrency": self.concurrency,
            "wait": wait,
            "name": worker_name(),
            "fetch_job_polling_interval": self.poll_seconds,
            "shutdown_graceful_timeout": 20.0,  # then running jobs are aborted (and retried)
            "delete_jobs": "never",  # kept for `solent jobs list` and the audit of work done
            "update_heartbeat_interval": max(0.5, self.stalled_seconds / 3),
            "stalled_worker_timeout": self.stalled_seconds,
        }

    async def recover_stalled(self) -> int:
        """Put the jobs of dead workers back in the queue (procrastinate's stalled-job
        support: a worker whose heartbeat is older than ``stalled_seconds`` is dead); how many.
        Every node runs this; a job another node took back first is skipped."""
        manager = self.app.job_manager
        stalled = await manager.get_stalled_jobs(
            queue=QUEUE, seconds_since_heartbeat=self.stalled_seconds
        )
        done = 0
        for job in stalled:
            try:
                await manager.retry_job(job)
            except Exception:  # procrastinate refuses a job no longer "doing": already handled
                log.info("stalled job %s already taken back", job.id, exc_info=True)
                continue
            done += 1
            JOBS_RUN.labels(job.task_name, "stalled").inc()
            log.warning("job %s (%s) of a dead worker is queued again", job.id, job.task_name)
        return done

    async def _recover_forever(self) -> None:
        while True:
            await asyncio.sleep(self.stalled_seconds / 3)
            try:
                await self.recover_stalled()
            except Exception:
                log.exception("looking for stalled jobs failed; trying again")

    async def _run_worker(self, **options: Any) -> None:
        """The procrastinate worker with the stalled-job recovery beside it, in one loop."""
        async with self.app.open_async():
            recovery = asyncio.create_task(self._recover_forever(), name="solent-jobs-stalled")
            try:
                await self.app.run_worker_async(**options)
            finally:
                recovery.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await recovery

    def work(self, *, until_idle: bool) -> None:
        if until_idle:
            self.dispatch()
            self.app.run_worker(**self._worker_options(wait=False))
            return
        dispatcher = _Follower("solent-jobs-dispatch", self.dispatch, self.poll_seconds)
        dispatcher.start()
        try:  # procrastinate stops gracefully on SIGTERM/SIGINT: running jobs finish
            options = self._worker_options(wait=True)
            asyncio.run(self._run_worker(**options, install_signal_handlers=True))
        finally:
            dispatcher.stop()

    def start(self) -> None:
        if not self.consumers:
            return  # nothing enqueues here: a node configured with no consumers runs no jobs
        COLLECTOR.queue = self
        self._dispatcher = _Follower("solent-jobs-dispatch", self.dispatch, self.poll_seconds)
        self._dispatcher.start()
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._worker_loop = loop

            async def main() -> None:
                self._worker_task = asyncio.current_task()
                ready.set()
                options = self._worker_options(wait=True)
                await self._run_worker(**options, install_signal_handlers=False)

            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main())
            loop.close()

        self._worker = threading.Thread(target=run, name="solent-jobs-worker", daemon=True)
        self._worker.start()
        ready.wait(10)

    def stop(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.stop()
        loop, task = self._worker_loop, self._worker_task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)  # procrastinate finishes running jobs
        if self._worker is not None:
            self._worker.join(timeout=30)

    # -- inspection -----------------------------------------------------------------------

    def list_jobs(self, status: str | None, limit: int) -> list[JobRow]:
        with self.app.open():
            jobs = self.app.job_manager.list_jobs(queue=QUEUE, status=status)
        rows = [
            JobRow(
                int(j.id or 0), j.task_name, str(j.status or ""), j.attempts, dict(j.task_kwargs)
            )
            for j in jobs
        ]
        return sorted(rows, key=lambda r: -r.id)[:limit]

    def retry(self, job_id: int) -> None:
        with self.app.open():
            found = self.app.job_manager.list_jobs(id=job_id, queue=QUEUE)
            if not found:
                raise NotFound(f"no job {job_id}")
            if str(found[0].status) not in ("failed", "doing"):
                raise InvalidInput(f"job {job_id} is {found[0].status}: only failed jobs retry")
            self.app.job_manager.retry_job_by_id(job_id, retry_at=datetime.now(UTC))

    def stats(self) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {}
        for (task, status), n in job_counts(self.index).items():
            counts.setdefault(task, {})[status] = n
        return {
            "backend": self.backend,
            "jobs": counts,
            "feed": _feed_stats(self.index, self.consumers),
        }


def _runner(name: str, fn: Any, ctx: TaskContext) -> Any:
    """The procrastinate task body: the plain task function, counted in /metrics."""

    def run(**kwargs: Any) -> None:
        try:
            fn(ctx, **kwargs)
        except Exception:
            JOBS_RUN.labels(name, "error").inc()
            raise
        JOBS_RUN.labels(name, "done").inc()

    run.__name__ = name
    return run


#: Status of a failed job an operator may ask to run again (procrastinate's: a "doing" job
#: is one whose worker may have died).
RETRYABLE = ("failed", "doing")
#: Longest error message kept with a failed job (the rest is in the node's log).
ERROR_CHARS = 300


class _Interrupted(Exception):
    """stop() ended a job's backoff: its batch is not acknowledged and runs again."""


@dataclass(frozen=True)
class _GaveUp:
    error: str
    first_at: datetime
    last_at: datetime


def _short_error(exc: BaseException) -> str:
    """What a failed job keeps of its last error: the exception's type and first line."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 3] + "..."


def _worker_alive(worker: str) -> bool:
    """Whether the process ``worker`` (host:pid) may still run: False only when it is on this
    host and no such process exists (a different host: cannot tell, so assume it may)."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class InProcessQueue:
    """The embedded default (SQLite): the same tasks, run by a thread of `solent serve`."""

    backend = "in-process"

    def __init__(
        self,
        index: Index,
        store: BlobStore,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        poll_seconds: float = 1.0,
        backoff_seconds: float = 2.0,
        consumers: tuple[Consumer, ...] = CONSUMERS,
        settings: Settings | None = None,
        notify: Callable[[str, Notice], int] | None = None,
        prefetch: PriorPrefetch | None = None,
        tell_ris: Callable[[RisNotice], tuple[str, str]] | None = None,
    ) -> None:
        self.index = index
        self.max_attempts = max_attempts
        self.ctx = TaskContext(index, store, worker_name(), settings, notify, prefetch, tell_ris)
        self.consumers = consumers
        self.poll_seconds = poll_seconds
        self.backoff_seconds = backoff_seconds
        self.failed = 0
        self._failed_lock = threading.Lock()
        self._followers: list[_Follower] = []
        # Set by stop(): a job waiting out its backoff gives up waiting, and its batch's cursor
        # is not advanced, so the next start runs it again (at least once).
        self._stopping = threading.Event()
        self._running: set[int] = set()  # failed jobs this process is running again now

    def dispatch(self) -> int:
        """Run the jobs of new events of every consumer now, one consumer after the other."""
        return sum(self.dispatch_consumer(consumer) for consumer in self.consumers)

    def dispatch_consumer(self, consumer: Consumer) -> int:
        """Run the failed jobs of one consumer an operator asked to run again, then the jobs of
        its new events; its cursor moves after they ran (at least once), in the transaction
        that records those that used all their attempts as failed. Each consumer has its own
        follower thread (start), so one waiting out the backoff of an unreachable peer (an IAN
        recipient: 2 + 4 + 8 + 16 + 32 s) does not hold up the others."""
        done = self._run_retries(consumer)
        while True:
            take = partial(
                take_events,
                dialect="sqlite",
                consumer=consumer.name,
                kinds=consumer.kinds,
                limit=BATCH,
                settle_seconds=consumer.settle_seconds,
                from_head=consumer.from_head,
            )
            events, old, new = self.index.write(take)
            if new == old:
                return done
            failures: list[JobFailure] = []
            for seq, task, args in consumer.batch_jobs_seq(events):
                try:
                    gave_up = self._run(task, args, self.max_attempts)
                except _Interrupted:
                    return done  # stopping: the batch runs again from its start next time
                done += 1
                if gave_up is not None:
                    failures.append(
                        JobFailure(
                            consumer.name,
                            seq,
                            task,
                            args,
                            self.max_attempts,
                            gave_up.error,
                            gave_up.first_at,
                            gave_up.last_at,
                        )
                    )
            ids = self.index.write(
                partial(_acknowledge, consumer=consumer.name, seq=new, failures=failures)
            )
            for job_id, f in zip(ids, failures, strict=True):
                with self._failed_lock:
                    self.failed += 1
                log.error(
                    "job %d (%s%r) failed %d times, last: %s; kept as failed: "
                    "`solent jobs retry %d` runs it again",
                    job_id,
                    f.task,
                    f.args,
                    f.attempts,
                    f.error,
                    job_id,
                )

    def _run(self, task: str, args: dict[str, Any], attempts: int) -> _GaveUp | None:
        """Run a job, up to ``attempts`` times with backoff; what it gave up on, if it did.
        Raises _Interrupted when stop() ends its backoff."""
        first: datetime | None = None
        for attempt in range(1, attempts + 1):
            try:
                TASKS[task](self.ctx, **args)
            except Exception as exc:
                JOBS_RUN.labels(task, "error").inc()
                first = first or now()
                if attempt == attempts:
                    log.warning("job %s%r failed %d times", task, args, attempt, exc_info=True)
                    return _GaveUp(_short_error(exc), first, now())
                if self._stopping.wait(self.backoff_seconds * 2 ** (attempt - 1)):
                    raise _Interrupted from None
            else:
                JOBS_RUN.labels(task, "done").inc()
                return None
        return None

    def _run_retries(self, consumer: Consumer) -> int:
        """Run once each failed job of ``consumer`` an operator asked to run again (as a
        procrastinate retry does: the job's attempts were used, it gets one more run)."""
        done = 0
        worker = self.ctx.worker
        while not self._stopping.is_set() and retry_waiting(self.index, consumer.name):
            job = self.index.write(partial(claim_failed_job, consumer=consumer.name, worker=worker))
            if job is None:
                return done
            self._running.add(job.id)
            try:
                gave_up = self._run(job.task, job.args, 1)
                error = None if gave_up is None else gave_up.error
                self.index.write(
                    partial(finish_failed_job, job_id=job.id, worker=worker, error=error, at=now())
                )
            finally:
                self._running.discard(job.id)
            done += 1
            if error is None:
                log.info("failed job %d (%s) ran again and succeeded", job.id, job.task)
            else:
                log.error("failed job %d (%s) ran again and failed: %s", job.id, job.task, error)
        return done

    def recover_stalled(self) -> int:
        """Failed jobs left "doing" by a process of this host that died running them again are
        asked to run again (procrastinate's stalled jobs); how many."""
        done = 0
        for job in doing_failed_jobs(self.index):
            worker = job.worker or ""
            ours = worker == self.ctx.worker
            if (ours and job.id in self._running) or (not ours and _worker_alive(worker)):
                continue
            self.index.write(partial(release_failed_job, job_id=job.id, worker=worker))
            JOBS_RUN.labels(job.task, "stalled").inc()
            log.warning("failed job %d (%s) of a dead process is queued again", job.id, job.task)
            done += 1
        return done

    def work(self, *, until_idle: bool) -> None:
        self.recover_stalled()
        self.dispatch()
        if until_idle:
            return
        self._stopping.clear()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stopping.set())
        while not self._stopping.wait(self.poll_seconds):
            self.dispatch()

    def start(self) -> None:
        if not self.consumers:
            return
        COLLECTOR.queue = self
        self._stopping.clear()
        try:
            self.recover_stalled()
        except Exception:
            log.exception("looking for failed jobs left running failed; continuing")
        poll = self.poll_seconds
        self._followers = [
            _Follower(f"solent-jobs-{c.name}", partial(self.dispatch_consumer, c), poll)
            for c in self.consumers
        ]
        for follower in self._followers:
            follower.start()

    def stop(self) -> None:
        self._stopping.set()
        for follower in self._followers:
            follower.stop()
        self._followers = []

    def list_jobs(self, status: str | None, limit: int) -> list[JobRow]:
        """The jobs that used all their attempts (here only those are kept: a job that
        succeeds leaves no row), newest first, and what became of them."""
        return [
            JobRow(j.id, j.task, j.status, j.attempts, j.args)
            for j in failed_jobs(self.index, status, limit)
        ]

    def retry(self, job_id: int) -> None:
        """Mark a failed job to run again: the follower of its consumer in `solent serve`
        (or `solent jobs work`) runs it at its next poll, once."""
        before = self.index.write(partial(queue_failed_job, job_id=job_id, retryable=RETRYABLE))
        if before is None:
            raise NotFound(f"no job {job_id}")
        if before not in RETRYABLE:
            raise InvalidInput(f"job {job_id} is {before}: only failed jobs retry")

    def stats(self) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {}
        for (task, status), n in failed_job_counts(self.index).items():
            counts.setdefault(task, {})[status] = n
        return {
            "backend": self.backend,
            "jobs": counts,
            "failed_in_this_process": self.failed,
            "feed": _feed_stats(self.index, self.consumers),
        }


def _acknowledge(
    conn: Connection, consumer: str, seq: int, failures: list[JobFailure]
) -> list[int]:
    """Record the batch's failed jobs and move the cursor past it, in one transaction: a crash
    before the commit runs the batch again; after it, its failures are kept."""
    ids = record_failed_jobs(conn, failures)
    advance(conn, consumer, seq)
    return ids


def open_job_queue(index: Index, store: BlobStore, **options: Any) -> JobQueue:
    if index.dialect == "postgresql":
        return ProcrastinateQueue(index, store, **options)
    options.pop("concurrency", None)
    options.pop("settle_seconds", None)
    options.pop("stalled_seconds", None)
    return InProcessQueue(index, store, **options)
