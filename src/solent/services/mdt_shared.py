"""MDT rooms across nodes (issue 16): the ``Broker`` of ``LiveHub`` over the archive's
``Broadcast`` (PostgreSQL LISTEN/NOTIFY; no extra server).

Every node's hub publishes room events to one channel; every node applies them in the order
PostgreSQL delivers them (commit order, the same on every node), so a room's presenter and view
are the same wherever its members are connected.

Late joiners: before an event that changes what a room shows (``view``, ``presenter``) is
announced, it is written to the meeting (``persist``; one writer thread, so in order). A node
that opens a room starts listening first and reads the meeting afterwards: whatever it reads is
either in that read or announced after it, so it never misses the current view. The view
carries ``seq``; the hub ignores one older than what it has.

A payload over NOTIFY's limit (a view with many measurements) is announced as a reference and
read back from the meeting by the receivers (``fetch``), still in order. After the listening
connection was lost and re-made, every open room re-reads its meeting (``resync``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from solent.services.broadcast import Broadcast, PostgresBroadcast
from solent.services.mdt_broker import Broker, Deliver, Event, LocalBroker

log = logging.getLogger(__name__)

CHANNEL = "solent_mdt"
BATCH = 64  # events taken from the queue per write + announce round
#: Write what changes the rooms' pictures for later joiners (room -> its events of one round,
#: in order), before they are announced; one transaction a round.
Persist = Callable[[dict[str, list[Event]]], None]
#: The events that rebuild a room as stored (presenter, latest view), read on the listener thread.
Fetch = Callable[[str], list[Event]]


class SharedBroker:
    def __init__(
        self, broadcast: Broadcast, persist: Persist, fetch: Fetch, ready: threading.Event | None
    ) -> None:
        self.broadcast = broadcast
        self.persist = persist
        self.fetch = fetch
        self._ready = ready  # set while the broadcast listens (None: always)
        self._rooms: dict[str, list[Deliver]] = {}  # touched on the event loop thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: queue.SimpleQueue[tuple[str, Event] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._lock = threading.Lock()

    # -- Broker -------------------------------------------------------------------------------

    def publish(self, room: str, event: Event) -> None:
        """Queue the event: written and announced by one thread, in order, off the event loop."""
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write, name="mdt-shared-publish", daemon=True
                )
                self._writer.start()
        self._outbox.put((room, event))

    def subscribe(self, room: str, deliver: Deliver) -> Callable[[], None]:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._unsubscribe is None:
            self._unsubscribe = self.broadcast.subscribe(CHANNEL, self._received)
        self._rooms.setdefault(room, []).append(deliver)

        def unsubscribe() -> None:
            subs = self._rooms.get(room)
            if subs and deliver in subs:
                subs.remove(deliver)
                if not subs:
                    del self._rooms[room]

        return unsubscribe

    def stored(self, room: str) -> list[Event]:
        """Once announcements from other nodes arrive here, what the meeting keeps (blocking)."""
        if self._ready is not None and not self._ready.wait(10):
            log.warning("not listening to other nodes yet; %s may start out of date", room)
        return self._stored(room)

    def close(self) -> None:
        if self._writer is not None:
            self._outbox.put(None)
            self._writer.join(timeout=5)
        if self._unsubscribe is not None:
            self._unsubscribe()

    # -- publishing thread ----------------------------------------------------------------------

    def _write(self) -> None:
        while True:
            first = self._outbox.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < BATCH:
                try:
                    item = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._outbox.put(None)
                    break
                batch.append(item)
            by_room: dict[str, list[Event]] = {}
            for room, event in batch:
                by_room.setdefault(room, []).append(event)
            try:
                self.persist(by_room)
            except Exception:
                log.exception("could not keep the live state of %s", ", ".join(by_room))
            for room, event in batch:
                try:
                    self.broadcast.publish(CHANNEL, {"room": room, "event": event})
                except ValueError:  # over NOTIFY's limit: receivers read it from the meeting
                    self._announce({"room": room, "ref": event.get("seq")})
                except Exception:
                    log.exception("could not announce an event of %s", room)

    def _announce(self, payload: dict[str, Any]) -> None:
        try:
            self.broadcast.publish(CHANNEL, payload)
        except Exception:
            log.exception("could not announce %r", payload)

    # -- listening thread -----------------------------------------------------------------------

    def _received(self, payload: dict[str, Any]) -> None:
        """Called on the broadcast's listening thread: hand the events to the event loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if payload.get("resync"):
            for open_room in list(self._rooms):
                self._hand_over(loop, open_room, self._stored(open_room))
            return
        room = payload.get("room")
        if not isinstance(room, str) or room not in self._rooms:
            return  # another node's meeting (or not open here)
        if "ref" in payload:
            events = [e for e in self._stored(room) if e.get("type") == "view"]
        else:
            event = payload.get("event")
            events = [event] if isinstance(event, dict) else []
        self._hand_over(loop, room, events)

    def _stored(self, room: str) -> list[Event]:
        try:
            return self.fetch(room)
        except Exception:
            log.exception("could not read the live state of %s", room)
            return []

    def _hand_over(self, loop: asyncio.AbstractEventLoop, room: str, events: list[Event]) -> None:
        if events:
            with contextlib.suppress(RuntimeError):  # the loop closed while shutting down
                loop.call_soon_threadsafe(self._dispatch, room, events)

    def _dispatch(self, room: str, events: list[Event]) -> None:
        for event in events:
            for deliver in list(self._rooms.get(room, ())):
                deliver(event)


def open_broker(broadcast: Broadcast, persist: Persist, fetch: Fetch) -> Broker:
    """Rooms shared across nodes on PostgreSQL; in-process on the embedded default."""
    if isinstance(broadcast, PostgresBroadcast):
        return SharedBroker(broadcast, persist, fetch, broadcast.listening)
    return LocalBroker()
