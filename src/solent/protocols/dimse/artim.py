"""Connections that have not associated yet: bounded in number and in age (the ARTIM timer).

PS3.8 9.1.5: an acceptor starts the ARTIM timer when a transport connection opens and drops
the connection if no A-ASSOCIATE-RQ arrives before it expires. pynetdicom starts that timer,
but its reactor only looks at it between PDUs: a peer that sends half a PDU header and stalls
holds a blocked thread forever, and every such connection counts against pynetdicom's
association limit, so a flood of silent sockets locks real modalities out. Here the listener
tracks such connections itself: they never take an association slot (slots are counted from
the A-ASSOCIATE-RQ on, see ``AssociationSlots``), one older than the ARTIM timeout is shut
down, and beyond ``limit`` of them the oldest is shut down to make room, so a modality that
sends its A-ASSOCIATE-RQ at once still gets through a flood.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import OrderedDict
from typing import Any

log = logging.getLogger(__name__)


def _drop(sock: socket.socket) -> None:
    """Wake the association thread blocked in recv (it sees end of stream and ends)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class PendingConnections:
    """Accepted sockets without an A-ASSOCIATE-RQ yet, oldest first."""

    def __init__(self, limit: int, artim_seconds: float) -> None:
        self.limit = limit
        self.artim_seconds = artim_seconds
        self._lock = threading.Lock()
        self._pending: OrderedDict[socket.socket, float] = OrderedDict()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0  # for tests and metrics: connections shut down unassociated

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def admit(self, sock: socket.socket, address: Any) -> None:
        """A connection was accepted; the oldest pending one goes if there are too many."""
        evicted: list[socket.socket] = []
        with self._lock:
            self._pending[sock] = time.monotonic()
            while len(self._pending) > self.limit:
                evicted.append(self._pending.popitem(last=False)[0])
            self.dropped += len(evicted)
        for old in evicted:
            _drop(old)
        if evicted:
            log.warning(
                "DICOM: %d unassociated connection(s) dropped: more than %d pending",
                len(evicted),
                self.limit,
                extra={"address": str(address)},
            )

    def associated(self, sock: object) -> None:
        """Its A-ASSOCIATE-RQ arrived: from now on it is an association, not a pending socket."""
        with self._lock:
            self._pending.pop(sock, None)  # type: ignore[call-overload]

    def reap(self) -> int:
        """Shut down every pending connection older than the ARTIM timeout."""
        cutoff = time.monotonic() - self.artim_seconds
        expired: list[socket.socket] = []
        with self._lock:
            for gone in [s for s in self._pending if s.fileno() == -1]:
                del self._pending[gone]  # closed by its peer before associating
            while self._pending:
                sock, opened = next(iter(self._pending.items()))
                if opened > cutoff:
                    break
                expired.append(sock)
                del self._pending[sock]
            self.dropped += len(expired)
        for sock in expired:
            _drop(sock)
        if expired:
            log.warning(
                "DICOM: %d connection(s) closed by the ARTIM timer: no A-ASSOCIATE-RQ in %gs",
                len(expired),
                self.artim_seconds,
            )
        return len(expired)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dimse-artim", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        tick = min(max(self.artim_seconds / 4, 0.1), 1.0)
        while not self._stop.wait(tick):
            self.reap()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _alive(association: object) -> bool:
    is_alive = getattr(association, "is_alive", None)
    return bool(is_alive()) if callable(is_alive) else True


class AssociationSlots:
    """Associations of this process, counted from their A-ASSOCIATE-RQ to their close."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._taken: set[object] = set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._taken)

    def take(self, key: object) -> bool:
        with self._lock:
            if key in self._taken:
                return True
            if len(self._taken) >= self.limit:
                # A slot is given back on EVT_CONN_CLOSE; an association thread that ended
                # without one (killed) must not hold its slot for ever.
                self._taken = {a for a in self._taken if _alive(a)}
            if len(self._taken) >= self.limit:
                return False
            self._taken.add(key)
            return True

    def release(self, key: object) -> None:
        with self._lock:
            self._taken.discard(key)
