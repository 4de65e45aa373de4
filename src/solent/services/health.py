"""Liveness and readiness of one node, as a load balancer asks them.

Liveness (`/health`) says the process answers. Readiness (`/health/ready`) says this node should
get new work: the index answers and its schema is at this code's head (or newer, during a rolling
upgrade), the blob store answers, and the node is not shutting down. On SIGTERM `solent serve`
marks the node as draining first, so the balancer takes it out before its listeners close.

Every check is bounded (``check_timeout``): a database or an S3 endpoint that accepts a
connection and then says nothing would otherwise hold the asking HTTP thread for the client's
own timeouts (minutes), and a balancer asking every 300 ms takes every thread of the node that
way. A check runs in a thread of its own, one at a time per kind: while one has not answered,
later asks wait for that same one (up to the bound) instead of starting another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from solent.index.sql import Index
    from solent.storage import BlobStore

# A well-formed key no blob has (keys are content digests): asking for it proves the store
# answers without reading or writing anything.
PROBE_KEY = "00/00/" + "0" * 64
#: How long a check may take before it counts as failed; under HAProxy's `timeout check 2s`.
CHECK_TIMEOUT_S = 1.5


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, str]


@dataclass
class HealthService:
    _index: Index
    _store: BlobStore
    _draining: threading.Event = field(default_factory=threading.Event)
    check_timeout: float = CHECK_TIMEOUT_S
    _inflight: dict[str, Future[Any]] = field(default_factory=dict)
    _inflight_lock: threading.Lock = field(default_factory=threading.Lock)

    def _probe(self, name: str, fn: Callable[[], Any]) -> Future[Any]:
        """The running check ``name``, or a new one started in its own thread."""
        with self._inflight_lock:
            running = self._inflight.get(name)
            if running is not None and not running.done():
                return running
            future: Future[Any] = Future()
            self._inflight[name] = future

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, name=f"solent-health-{name}", daemon=True).start()
        return future

    def _outcome(self, future: Future[Any], deadline: float) -> tuple[Any, str]:
        """(value, "ok") or (None, why it failed) once ``future`` ends or ``deadline`` passes."""
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic())), "ok"
        except FutureTimeout:
            return None, f"unavailable: no answer within {self.check_timeout:g} s"
        except Exception as exc:
            return None, f"unavailable: {type(exc).__name__}"

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def begin_shutdown(self) -> None:
        """From now on readiness fails; the process keeps serving until it is told to stop."""
        self._draining.set()

    def live(self) -> bool:
        """The process is up and its database answers (it is not wedged), within the bound."""

        def select_one() -> None:
            with self._index.read() as conn:
                conn.exec_driver_sql("SELECT 1")  # not a count: /health stays cheap at 10 M

        _, outcome = self._outcome(
            self._probe("live", select_one), time.monotonic() + self.check_timeout
        )
        return outcome == "ok"

    def ready(self) -> Readiness:
        from solent.index.migrate import schema_state

        deadline = time.monotonic() + self.check_timeout
        # Both at once: a hung store and a slow index together still answer within the bound.
        schema = self._probe("schema", lambda: schema_state(self._index))
        store = self._probe("store", lambda: self._store.exists(PROBE_KEY))
        checks: dict[str, str] = {}
        state, checks["index"] = self._outcome(schema, deadline)
        checks["schema"] = state if checks["index"] == "ok" else "unknown"
        _, checks["store"] = self._outcome(store, deadline)
        checks["node"] = "draining" if self.draining else "serving"
        ready = (
            checks["index"] == "ok"
            and checks["schema"] in ("head", "ahead")
            and checks["store"] == "ok"
            and not self.draining
        )
        return Readiness(ready, checks)
