"""The task functions and the change-feed consumers that feed them.

A task is a plain function of a `TaskContext` and JSON arguments, so the PostgreSQL queue and
the in-process runner call the very same code. A task raises to ask for a retry (the store or
index was unreachable); a result worth keeping (e.g. a fixity failure) is recorded, not raised.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from solent.errors import NotFound
from solent.index.jobs import FeedEvent, record_blob_check

if TYPE_CHECKING:
    from solent.index.sql import Index
    from solent.storage import BlobStore

JOBS_RUN = Counter(
    "solent_jobs_run_total", "Background jobs run by this process", ["task", "outcome"]
)
BLOB_CHECKS = Counter("solent_blob_checks_total", "Fixity checks of stored blobs", ["result"])


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class TaskContext:
    index: Index
    store: BlobStore
    worker: str


def verify_blob(ctx: TaskContext, sop_instance_uid: str) -> None:
    """Fixity: the stored bytes still hash to the digest recorded at ingest (issue 16's first
    change-feed consumer; object stores are not trusted blindly across a region)."""
    digest = ctx.index.instance_digest(sop_instance_uid)
    if digest is None:
        return  # deleted since it was stored: nothing left to check
    sha256, key = digest
    try:
        with ctx.store.open(key) as stream:
            h = hashlib.sha256()
            while chunk := stream.read(1 << 20):
                h.update(chunk)
    except NotFound:
        ok, detail = False, "blob missing from the store"
    else:
        ok = h.hexdigest() == sha256
        detail = "digest matches" if ok else f"digest {h.hexdigest()} != recorded {sha256}"
    BLOB_CHECKS.labels("ok" if ok else "failed").inc()
    record_blob_check(ctx.index, sop_instance_uid, key, ok, detail, ctx.worker)


Task = Callable[..., None]
TASKS: dict[str, Task] = {"verify_blob": verify_blob}


@dataclass(frozen=True)
class Consumer:
    """Turns the change-feed events it cares about into (task, arguments) jobs."""

    name: str
    kinds: frozenset[str]
    jobs: Callable[[FeedEvent], list[tuple[str, dict[str, Any]]]]


def _verify_jobs(event: FeedEvent) -> list[tuple[str, dict[str, Any]]]:
    if not event.sop_instance_uid:
        return []
    return [("verify_blob", {"sop_instance_uid": event.sop_instance_uid})]


CONSUMERS: tuple[Consumer, ...] = (
    Consumer("fixity", frozenset({"instance.stored", "instance.replaced"}), _verify_jobs),
)


def consumers_named(names: str) -> tuple[Consumer, ...]:
    """The consumers a comma list of names selects (SOLENT_JOBS_CONSUMERS)."""
    from solent.errors import ConfigurationError

    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {c.name: c for c in CONSUMERS}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ConfigurationError(
            f"unknown job consumer(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return tuple(known[n] for n in wanted)
