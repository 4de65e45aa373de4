"""Where jobs wait and who runs them: procrastinate on PostgreSQL, in-process on SQLite.

Both follow the change feed with the same consumers (`tasks.CONSUMERS`) and run the same task
functions (`tasks.TASKS`); only the claiming differs. procrastinate (maintained, PostgreSQL
only, no extra server) claims each job for exactly one worker across all nodes with
SELECT ... FOR UPDATE SKIP LOCKED and retries with exponential backoff. The in-process runner is
the embedded default's: one node, a thread per consumer (a consumer waiting out a retry holds
up only its own feed), the cursor advanced after the tasks ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
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
from solent.index.jobs import QUEUE, advance, defer_jobs, feed_position, job_counts, take_events
from solent.index.sql import PG_KEEPALIVE
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
        yield jobs
        yield backlog


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

    def dispatch(self) -> int:
        """Run the jobs of new events of every consumer now, one consumer after the other."""
        return sum(self.dispatch_consumer(consumer) for consumer in self.consumers)

    def dispatch_consumer(self, consumer: Consumer) -> int:
        """Run the jobs of one consumer's new events; its cursor moves after they ran (at least
        once). Each consumer has its own follower thread (start), so one waiting out the
        backoff of an unreachable peer (an IAN recipient: 2 + 4 + 8 + 16 + 32 s) does not hold
        up the others."""
        done = 0
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
            for task, args in consumer.batch_jobs(events):
                if not self._run(task, args):
                    return done  # stopping: the batch runs again from its start next time
                done += 1
            self.index.write(partial(advance, consumer=consumer.name, seq=new))

    def _run(self, task: str, args: dict[str, Any]) -> bool:
        """Run a job with retries; False when stop() interrupted its backoff."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                TASKS[task](self.ctx, **args)
            except Exception:
                JOBS_RUN.labels(task, "error").inc()
                if attempt == self.max_attempts:
                    with self._failed_lock:
                        self.failed += 1
                    log.exception("job %s%r failed %d times; given up", task, args, attempt)
                    return True
                if self._stopping.wait(self.backoff_seconds * 2 ** (attempt - 1)):
                    return False
            else:
                JOBS_RUN.labels(task, "done").inc()
                return True
        return True

    def work(self, *, until_idle: bool) -> None:
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
        raise InvalidInput(
            "on the embedded SQLite index jobs run in-process as events arrive and are not "
            "queued; `solent jobs stats` shows how far they have followed the change feed"
        )

    def retry(self, job_id: int) -> None:
        self.list_jobs(None, 0)

    def stats(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "failed_in_this_process": self.failed,
            "feed": _feed_stats(self.index, self.consumers),
        }


def open_job_queue(index: Index, store: BlobStore, **options: Any) -> JobQueue:
    if index.dialect == "postgresql":
        return ProcrastinateQueue(index, store, **options)
    options.pop("concurrency", None)
    options.pop("settle_seconds", None)
    options.pop("stalled_seconds", None)
    return InProcessQueue(index, store, **options)
