"""Fan-out of MDT room events: the one seam between the live rooms and how nodes talk.

``LiveHub`` publishes every room event through a ``Broker`` and applies what the broker
delivers, so a room's state is rebuilt from the same events on every node. The broker also
numbers the events that change what a room shows (``ORDERED``: ``seq``, one order per room) and
keeps the room's presenter and latest view with the meeting — the one path that writes them.

The default ``LocalBroker`` delivers within this process; ``SharedBroker``
(services/mdt_shared.py) over PostgreSQL LISTEN/NOTIFY serves several nodes with the same methods
(deliveries arrive on the event loop thread that subscribed, in ``seq`` order per room).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

Event = dict[str, Any]
Deliver = Callable[[Event], None]
#: Events numbered in one order per room: what the room shows depends on their order.
ORDERED = frozenset({"view", "presenter"})
#: Announce a room's events within the transaction that kept them: (connection, room, events).
Announce = Callable[[Any, str, list[Event]], None]
#: Keep what changes the rooms' pictures (room -> its events of one round, in order) in one
#: transaction: number the ``ORDERED`` events still without ``seq``, write presenter and view,
#: then call ``announce`` (if any) in that same transaction.
Keep = Callable[[dict[str, list[Event]], Announce | None], None]
BATCH = 64  # events taken from the queue per write round


class Broker(Protocol):
    def publish(self, room: str, event: Event) -> None:
        """Send ``event`` to every subscriber of ``room`` (on every node)."""

    def subscribe(self, room: str, deliver: Deliver) -> Callable[[], None]:
        """Call ``deliver`` for each event of ``room``; returns the unsubscribe function."""

    def stored(self, room: str) -> list[Event]:
        """The room's ``snapshot`` kept for a node that opens it after it started (blocking: call
        from a worker thread once subscribed); [] when rooms live in one process only."""

    def close(self) -> None:
        """Finish sending and keeping what was published."""


class RoundWriter:
    """One thread that takes queued (room, event) pairs in rounds of up to ``BATCH`` and hands
    each round to ``write`` (room -> events, in order): one transaction per round, off the event
    loop, and the order of publishing kept."""

    def __init__(self, write: Callable[[dict[str, list[Event]]], None], name: str) -> None:
        self._write = write
        self._name = name
        self._queue: queue.SimpleQueue[tuple[str, Event] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, room: str, event: Event) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._queue.put((room, event))

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            by_room: dict[str, list[Event]] = {}
            for room, event in batch:
                by_room.setdefault(room, []).append(event)
            try:
                self._write(by_room)
            except Exception:
                log.exception("could not keep the live state of %s", ", ".join(by_room))


class LocalBroker:
    """In-process broker: a publish numbers the event, calls the room's subscribers
    synchronously, in order, then queues it to be kept (presenter, latest view) by one thread.

    Used from the event loop thread only (WebSocket handlers), so it needs no lock.
    """

    def __init__(self, keep: Keep | None = None) -> None:
        self._rooms: dict[str, list[Deliver]] = {}
        self._seq: dict[str, int] = {}  # room -> last number given (one process: no gaps)
        self._writer = RoundWriter(lambda rounds: keep(rounds, None), "mdt-keep") if keep else None

    def publish(self, room: str, event: Event) -> None:
        if event.get("type") in ORDERED:
            self._seq[room] = event["seq"] = self._seq.get(room, 0) + 1
        for deliver in list(self._rooms.get(room, ())):
            deliver(event)
        if self._writer is not None and event.get("type") in ORDERED:
            self._writer.put(room, event)

    def subscribe(self, room: str, deliver: Deliver) -> Callable[[], None]:
        self._rooms.setdefault(room, []).append(deliver)

        def unsubscribe() -> None:
            subs = self._rooms.get(room)
            if subs and deliver in subs:
                subs.remove(deliver)
                if not subs:
                    del self._rooms[room]

        return unsubscribe

    def stored(self, room: str) -> list[Event]:
        return []  # a room lives in this process only: nothing outlives it

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def rooms(self) -> int:
        return len(self._rooms)
