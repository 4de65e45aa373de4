"""Per-process caches behind DICOMweb reads: access decisions and content-keyed bytes.

A viewer opens a series with one /metadata and then hundreds of /frames requests, several in
parallel; asking the index "may this user see this study?" for each one costs more than the
frame. ``AccessCache`` remembers *granted* decisions per (principal, study) for a few seconds
(``SOLENT_DICOMWEB_ACCESS_CACHE_SECONDS``): a refusal is never remembered, and a revoked or
expired break-glass grant, a patient no longer linked or a user's changed trusts take effect
within that TTL. A different principal (name, trust, roles or kind) never shares an entry.

``ByteCache`` holds bytes whose key already says everything they depend on (content hashes
plus the patient's current identity fingerprint), so entries never go stale; it is bounded by
size and evicts least recently used.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from solent.domain.principal import Principal
from solent.ttl_cache import TtlCache

V = TypeVar("V")


class AccessCache:
    """Granted (principal, study, action) decisions, each valid for ``ttl`` seconds."""

    MAX_ENTRIES = 50_000

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._granted: TtlCache[bool] = TtlCache(ttl, limit=self.MAX_ENTRIES, clock=clock)

    @property
    def ttl(self) -> float:
        return self._granted.ttl

    @property
    def clock(self) -> Callable[[], float]:
        return self._granted.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._granted.clock = clock

    @staticmethod
    def _key(principal: Principal, study_uid: str, action: str) -> tuple[Hashable, ...]:
        # The address is left out: the same user's next request may come from another port
        # or proxy; everything that decides access (kind, name, trust, roles, and the national
        # role or organisation selected at login: R33) is in the key.
        return (
            principal.kind,
            principal.name,
            principal.trust,
            principal.roles,
            principal.national,
            principal.org_selected,
            principal.launch,
            study_uid,
            action,
        )

    def granted(self, principal: Principal, study_uid: str, action: str) -> bool:
        return self._granted.lookup(self._key(principal, study_uid, action))[0]

    def grant(self, principal: Principal, study_uid: str, action: str) -> None:
        self._granted.put(self._key(principal, study_uid, action), True)

    def clear(self) -> None:
        self._granted.clear()


class ByteCache(Generic[V]):
    """LRU of values whose size is ``size_of(value)`` bytes, at most ``max_bytes`` in all."""

    def __init__(self, max_bytes: int, size_of: Callable[[V], int]) -> None:
        self.max_bytes = max_bytes
        self.size_of = size_of
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        #: Look-ups answered and not: what shows a prefetch warmed what was asked for later.
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return value

    def put(self, key: Hashable, value: V) -> None:
        size = self.size_of(value)
        if size > self.max_bytes // 4:  # one huge entry must not flush everything else
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= self.size_of(old)
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= self.size_of(evicted)
