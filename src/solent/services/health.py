"""Liveness and readiness of one node, as a load balancer asks them.

Liveness (`/health`) says the process answers. Readiness (`/health/ready`) says this node should
get new work: the index answers and its schema is at this code's head (or newer, during a rolling
upgrade), the blob store answers, and the node is not shutting down. On SIGTERM `solent serve`
marks the node as draining first, so the balancer takes it out before its listeners close.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from solent.index.sql import Index
    from solent.storage import BlobStore

# A well-formed key no blob has (keys are content digests): asking for it proves the store
# answers without reading or writing anything.
PROBE_KEY = "00/00/" + "0" * 64


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, str]


@dataclass
class HealthService:
    _index: Index
    _store: BlobStore
    _draining: threading.Event = field(default_factory=threading.Event)

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def begin_shutdown(self) -> None:
        """From now on readiness fails; the process keeps serving until it is told to stop."""
        self._draining.set()

    def live(self) -> bool:
        """The process is up and its database answers (it is not wedged)."""
        try:
            with self._index.read() as conn:
                conn.exec_driver_sql("SELECT 1")  # not a count: /health stays cheap at 10 M
        except Exception:
            return False
        return True

    def ready(self) -> Readiness:
        from solent.index.migrate import schema_state

        checks: dict[str, str] = {}
        try:
            state = schema_state(self._index)
            checks["index"] = "ok"
            checks["schema"] = state
        except Exception as exc:
            checks["index"] = f"unavailable: {type(exc).__name__}"
            checks["schema"] = "unknown"
        try:
            self._store.exists(PROBE_KEY)
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = f"unavailable: {type(exc).__name__}"
        checks["node"] = "draining" if self.draining else "serving"
        ready = (
            checks["index"] == "ok"
            and checks["schema"] in ("head", "ahead")
            and checks["store"] == "ok"
            and not self.draining
        )
        return Readiness(ready, checks)
