"""Answers remembered for a few seconds, per process: the one mechanism behind the look-up
caches of hot paths (user and API-token look-ups per HTTP request, HL7 sender registrations,
DICOMweb access decisions), so each says only what it keeps and for how long.

An entry is used until ``ttl`` seconds after it was stored, and never after ``generation()``
changes (a change made in this process drops everything at once; `solent serve` calls
`invalidate_all` when another node announces an access change on PostgreSQL, issue 16, and on
an embedded archive every look-up first checks the stamp file other processes append to,
`watch`). Bounded: cleared when it grows past ``limit`` entries. ``None`` is a value
like any other, so refusals stay cheap too.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

V = TypeVar("V")


def _always() -> int:
    return 0


_epoch = 0  # bumped by invalidate_all: every entry of every cache made before is stale
_stamp: str | None = None  # a file other processes append to when access changed
_stamp_seen: tuple[int, int] | None = None


def invalidate_all() -> None:
    """Drop what every cache of this process holds (access changed somewhere)."""
    global _epoch
    _epoch += 1


def watch(stamp: Path | None) -> None:
    """Also drop everything when ``stamp`` changes: how the processes sharing an embedded
    archive announce access changes to each other (solent.index.access_stamp)."""
    global _stamp, _stamp_seen
    _stamp = None if stamp is None else str(stamp)
    _stamp_seen = _stamp_key()


def _stamp_key() -> tuple[int, int] | None:
    if _stamp is None:
        return None
    try:
        st = os.stat(_stamp)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def current_epoch() -> int:
    """The epoch entries are checked against, after one look at the stamp (when watched)."""
    global _stamp_seen
    if _stamp is not None:
        key = _stamp_key()
        if key != _stamp_seen:
            _stamp_seen = key
            invalidate_all()
    return _epoch


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
        self._items: dict[Hashable, tuple[float, tuple[int, int], V]] = {}
        self._lock = threading.Lock()

    def lookup(self, key: Hashable) -> tuple[bool, V | None]:
        """(True, value) while ``key`` is fresh, else (False, None)."""
        hit = self._items.get(key)
        if hit is None or hit[0] <= self.clock() or hit[1] != (self.generation(), current_epoch()):
            return False, None
        return True, hit[2]

    def put(self, key: Hashable, value: V, *, stamp: tuple[int, int] | None = None) -> None:
        """``stamp``: the (generation, epoch) read before the value was loaded, so a change
        announced while loading leaves the entry stale instead of fresh."""
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._items) >= self.limit:
                self._items.clear()
            stamp = stamp or (self.generation(), current_epoch())
            self._items[key] = (self.clock() + self.ttl, stamp, value)

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        """The fresh value of ``key``, or ``load()``'s, remembered."""
        found, value = self.lookup(key)
        if found:
            return value  # type: ignore[return-value]
        stamp = (self.generation(), current_epoch())
        value = load()
        self.put(key, value, stamp=stamp)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
