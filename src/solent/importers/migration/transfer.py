"""Move a source's pending instances into the archive: parallel, throttled, resumable.

Work is taken from the index (``Services.migration.pending``), one series per fetch, newest
studies first; each fetched file goes through ingest and its state row is updated at once, so
a killed run loses at most the files in flight, which the next run fetches again.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

from solent.domain.principal import Principal
from solent.importers.migration.sources import SourceClient
from solent.services.migration import Item, MigrationService, Source, within_hours

log = logging.getLogger(__name__)

SERIES_BATCH = 64  # instances per C-GET: one round trip for many, a bounded loss on a kill


@dataclass
class TransferStats:
    total: int = 0
    done: int = 0
    bytes: int = 0
    states: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seconds: float = 0.0
    stopped: str = ""  # why the run stopped early (working hours), empty if it finished
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # reason -> n

    def as_json(self) -> dict[str, object]:
        rate = self.done / self.seconds if self.seconds else 0.0
        return {
            "total": self.total,
            "done": self.done,
            "bytes": self.bytes,
            "states": dict(self.states),
            "seconds": round(self.seconds, 3),
            "instances_per_s": round(rate, 2),
            "mb_per_s": round(self.bytes / 1e6 / self.seconds, 3) if self.seconds else 0.0,
            "stopped": self.stopped,
            "failure_reasons": dict(self.failures),
        }


class Throttle:
    """At most ``rate`` instances per second over all associations of a source (0: none)."""

    def __init__(self, rate: int) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + n * self.interval
        if start > now:
            time.sleep(start - now)


def batches(items: list[Item]) -> list[list[Item]]:
    """Consecutive items of one series, at most SERIES_BATCH each (order kept)."""
    out: list[list[Item]] = []
    for item in items:
        if out and out[-1][0].series_uid == item.series_uid and len(out[-1]) < SERIES_BATCH:
            out[-1].append(item)
        else:
            out.append([item])
    return out


def run_transfer(
    migration: MigrationService,
    principal: Principal,
    src: Source,
    client: SourceClient,
    workdir: Path,
    *,
    newest_first: bool = True,
    json_out: TextIO | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    clock: Callable[[], datetime] = datetime.now,
) -> TransferStats:
    items = migration.pending(principal, src.name, newest_first=newest_first)
    stats = TransferStats(total=len(items))
    throttle = Throttle(src.rate)
    lock = threading.Lock()
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)

    def report() -> None:
        if json_out is None:
            return
        elapsed = time.monotonic() - started
        rate = stats.done / elapsed if elapsed else 0.0
        line = {
            "source": src.name,
            "done": stats.done,
            "total": stats.total,
            "states": dict(stats.states),
            "instances_per_s": round(rate, 2),
            "eta_s": round((stats.total - stats.done) / rate, 1) if rate else None,
        }
        json_out.write(json.dumps(line) + "\n")
        json_out.flush()

    def one(batch: list[Item]) -> None:
        throttle.take(len(batch))
        with tempfile.TemporaryDirectory(prefix="migrate-", dir=workdir) as tmp:
            fetched: list[tuple[Item, Path]] = []
            outcomes: list[tuple[str, int]] = []
            reasons: list[str] = []
            for item, got in client.fetch(batch, Path(tmp)):
                if isinstance(got, str):
                    migration.fail(principal, src.name, item.sop_uid, got)
                    outcomes.append(("failed", 0))
                    reasons.append(got)
                else:
                    fetched.append((item, got))
            sizes = [path.stat().st_size for _, path in fetched]
            try:
                states = migration.accept_batch(principal, src, fetched)
            except Exception as exc:  # one poisonous file must not stop a migration
                log.exception("migration batch of series %s failed", batch[0].series_uid)
                states = []
                why = (
                    f"could not be stored ({type(exc).__name__}: {exc}); retried on the "
                    "next run; if it fails again, report it with this file"
                )
                for item, _ in fetched:
                    migration.fail(principal, src.name, item.sop_uid, why)
                    states.append("failed")
                    reasons.append(why)
            outcomes += list(zip(states, sizes, strict=True))
        with lock:
            for state, size in outcomes:
                stats.done += 1
                stats.states[state] += 1
                if state == "stored":
                    stats.bytes += size
            for why in reasons:
                stats.failures[why] += 1
            done = stats.done
        if on_progress is not None:
            on_progress(done, stats.total)
        with lock:
            report()  # one JSON line per finished series batch

    todo = batches(items)
    with ThreadPoolExecutor(max_workers=src.associations, thread_name_prefix="migrate") as pool:
        pending: set[Future[None]] = set()
        for batch in todo:
            now = clock()
            if not within_hours(src.hours, now.hour * 60 + now.minute):
                stats.stopped = f"outside the source's working hours ({src.hours})"
                break
            pending.add(pool.submit(one, batch))
            if len(pending) >= src.associations * 2:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    fut.result()
        for fut in pending:
            fut.result()
    stats.seconds = time.monotonic() - started
    return stats
