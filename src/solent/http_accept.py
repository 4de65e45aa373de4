"""Fair accept among the HTTP processes of one node (SOLENT_HTTP_WORKERS > 1, issue 16).

The processes share one listening socket. Left to uvloop, whichever process wakes first
accepts every connection waiting, so the ten keep-alive connections a viewer or a balancer
opens at once could all land on one process: its requests queue behind its GIL while the
others idle (`python -m bench query --http` printed splits of 0/10). Keep-alive connections
never move afterwards, so the split made at accept time lasts.

Here each process accepts one connection at a time, and only while it holds no more open
connections than the least loaded of its live siblings; otherwise it leaves the connection in
the queue for them for up to ``MAX_DEFER`` seconds, then takes it anyway (a sibling may be
busy, stuck or gone). The processes publish their counts on a shared page (``LoadBoard``, a
memfd the node passes to its workers) with a heartbeat, so a process that stopped publishing
no longer counts. Written by hand because neither uvicorn nor uvloop balances accepts across
processes; the kernel's SO_REUSEPORT hash splits ten connections no better.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import socket
import time
from collections.abc import Callable, Collection
from typing import Any

log = logging.getLogger(__name__)

MAX_DEFER = 0.02  # seconds a connection may wait for a less loaded sibling to take it
DEFER_STEP = 0.001
PUBLISH_EVERY = 0.1  # closed connections are published at least this often
STALE_AFTER_MS = 1000  # a slot not refreshed for this long belongs to no live process
START_GRACE_MS = 60_000  # a process counts as live this long after it took its slot
_FIELDS = 2  # per slot: open connections, heartbeat (CLOCK_MONOTONIC ms, the same in all)


class LoadBoard:
    """Open connections per HTTP process of a node, on a page every process maps."""

    def __init__(self, fd: int, slots: int, slot: int) -> None:
        if not 0 <= slot < slots:
            raise ValueError(f"slot {slot} is not among {slots}")
        self.fd, self.slots, self.slot = fd, slots, slot
        self._map = mmap.mmap(fd, slots * _FIELDS * 8)
        self._cells = memoryview(self._map).cast("q")
        # Live from now on, for START_GRACE_MS at most before it beats: siblings already
        # accepting leave this process its share while it finishes starting up.
        self.publish(0, ahead_ms=START_GRACE_MS)

    @classmethod
    def create(cls, slots: int) -> LoadBoard:
        """The node's board (slot 0: `solent serve` itself); its fd is passed to the workers."""
        fd = os.memfd_create("solent-http-load", 0)  # not inheritable: pass_fds hands it on
        os.ftruncate(fd, slots * _FIELDS * 8)
        return cls(fd, slots, 0)

    def publish(self, connections: int, *, ahead_ms: int = 0) -> None:
        base = self.slot * _FIELDS
        self._cells[base] = connections
        self._cells[base + 1] = time.monotonic_ns() // 1_000_000 + ahead_ms

    def least_of_others(self) -> int | None:
        """The fewest connections any live sibling holds; None when none is live."""
        now = time.monotonic_ns() // 1_000_000
        counts = [
            self._cells[i * _FIELDS]
            for i in range(self.slots)
            if i != self.slot and now - self._cells[i * _FIELDS + 1] < STALE_AFTER_MS
        ]
        return min(counts) if counts else None


class FairAcceptor:
    """Accepts on a shared listening socket for one process; stands in for the asyncio
    Server uvicorn would create (``close`` and ``wait_closed`` are all uvicorn uses)."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        connections: Collection[Any],
        board: LoadBoard,
        ssl: Any = None,
    ) -> None:
        self.sock = sock
        self.factory = protocol_factory
        self.connections = connections  # uvicorn's live connections of this process
        self.board = board
        self.ssl = ssl
        self._connecting: set[asyncio.Task[Any]] = set()
        self._fd = sock.fileno()
        sock.setblocking(False)
        self._tasks = [asyncio.create_task(self._accept()), asyncio.create_task(self._beat())]

    def held(self) -> int:
        return len(self.connections) + len(self._connecting)

    def close(self) -> None:
        self._unwatch()  # now: uvicorn closes the socket right after
        for task in self._tasks:
            task.cancel()

    def _unwatch(self) -> None:
        with contextlib.suppress(ValueError, OSError, RuntimeError):
            asyncio.get_running_loop().remove_reader(self._fd)

    async def wait_closed(self) -> None:
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _beat(self) -> None:
        while True:
            self.board.publish(self.held())
            await asyncio.sleep(PUBLISH_EVERY)

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self._fd, wake)
        try:
            await ready
        finally:
            self._unwatch()

    async def _accept(self) -> None:
        deferred_since: float | None = None
        while True:
            await self._readable()
            least = self.board.least_of_others()
            now = time.monotonic()
            if least is not None and self.held() > least:
                deferred_since = deferred_since or now
                if now - deferred_since < MAX_DEFER:
                    await asyncio.sleep(DEFER_STEP)  # a less loaded sibling may take it
                    continue
            try:
                conn, _address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                deferred_since = None  # a sibling took it
                continue
            except OSError as exc:  # e.g. out of file descriptors: retry, do not spin
                log.warning("accepting an HTTP connection failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            deferred_since = None
            task = asyncio.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)
            self.board.publish(self.held())

    async def _connect(self, conn: socket.socket) -> None:
        # A task per connection: a TLS handshake must not hold up the next accept.
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(self.factory, conn, ssl=self.ssl)
        except Exception as exc:  # the peer went during the handshake: nothing to serve
            log.debug("HTTP connection not set up: %s", exc)
            conn.close()
