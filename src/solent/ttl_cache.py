"""Answers remembered for a few seconds, per process: the one mechanism behind the look-up
caches of hot paths (user and API-token look-ups per HTTP request, HL7 sender registrations,
DICOMweb access decisions), so each says only what it keeps and for how long.

An entry is used until ``ttl`` seconds after it was stored, and never after ``generation()``
changes (a change made in this process drops everything at once; other processes wait out the
TTL). Bounded: cleared when it grows past ``limit`` entries. ``None`` is a value like any other,
so refusals stay cheap too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


def _always() -> int:
    return 0


class TtlCache(Generic[V]):
    def __init__(
        self,
        ttl: float,
        *,
        limit: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        generation: Callable[[], int] = _always,
    ) -> None:
        self.ttl = ttl
        self.limit = limit
        self.clock = clock
        self.generation = generation
        self._items: dict[Hashable, tuple[float, int, V]] = {}
        self._lock = threading.Lock()

    def lookup(self, key: Hashable) -> tuple[bool, V | None]:
        """(True, value) while ``key`` is fresh, else (False, None)."""
        hit = self._items.get(key)
        if hit is None or hit[0] <= self.clock() or hit[1] != self.generation():
            return False, None
        return True, hit[2]

    def put(self, key: Hashable, value: V) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._items) >= self.limit:
                self._items.clear()
            self._items[key] = (self.clock() + self.ttl, self.generation(), value)

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        """The fresh value of ``key``, or ``load()``'s, remembered."""
        found, value = self.lookup(key)
        if found:
            return value  # type: ignore[return-value]
        value = load()
        self.put(key, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
