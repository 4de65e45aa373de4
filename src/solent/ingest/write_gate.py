"""Ingest's write gate on SQLite: the index writes of every thread and every receiving process
(DIMSE workers) one at a time.

SQLite's own busy handler makes a waiting writer sleep 1, 2, 5, 10 ... ms between tries, which
on a busy port costs more than the transaction; a lock file beside the database waits in the
kernel and wakes the next writer at once, while its group-commit queue fills. With PostgreSQL
there is no gate (row locks; audit_head serialises the chain).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator

from solent.index.sql import Index

_GATES: dict[str, tuple[int, threading.Lock]] = {}
_GATES_LOCK = threading.Lock()


def _sqlite_gate(index: Index) -> tuple[int | None, threading.Lock]:
    """The write gate of an SQLite database file: a lock file beside it, opened once per
    process and database (flock excludes other processes; the thread lock, this one's)."""
    path = index.url.split("///", 1)[1].split("?", 1)[0] if "///" in index.url else ""
    if index.dialect != "sqlite" or not path or path == ":memory:":
        return None, threading.Lock()
    path = os.path.realpath(path)
    with _GATES_LOCK:
        if path not in _GATES:
            fd = os.open(path + ".ingest-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            _GATES[path] = (fd, threading.Lock())
        return _GATES[path]


class WriteGate:
    """The gate of one database, re-entrant for the thread holding it (group commit takes it
    before its queue and writes under it)."""

    def __init__(self, index: Index) -> None:
        self._fd, self._lock = _sqlite_gate(index)
        self._holder: int | None = None  # thread ident holding the gate

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self._fd is None or self._holder == threading.get_ident():
            yield  # no gate, or this thread holds it already
            return
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._holder = threading.get_ident()
            try:
                yield
            finally:
                self._holder = None
                fcntl.flock(self._fd, fcntl.LOCK_UN)
