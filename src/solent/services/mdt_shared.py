"""MDT rooms across nodes (issue 16): the ``Broker`` of ``LiveHub`` over the archive's
``Broadcast`` (PostgreSQL LISTEN/NOTIFY; no extra server).

One order per room, set by the database: each round of events is kept in one transaction that
locks the rooms' meeting rows, numbers the events that change what a room shows (``seq`` from
the meeting's ``live_seq``), writes the presenter and latest view, and NOTIFYs the events. A
notification is delivered when its transaction commits, and PostgreSQL delivers those of
different transactions in commit order, which for one room (its row locked until commit) is
``seq`` order: every node sees the same events in the same order, whichever node sent them.

Late joiners: a node that opens a room starts listening first and reads the meeting's snapshot
(presenter, latest view, ``live_seq``) afterwards: whatever it reads is either in that snapshot
or announced after it, and the hub ignores an event numbered at or below what it has.

A payload over NOTIFY's limit (a view with many measurements) is announced as a reference and
the receivers read the snapshot instead, still in order. After the listening connection was
lost and re-made, every open room re-reads its snapshot (``resync``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from solent.services.broadcast import Broadcast, PostgresBroadcast
from solent.services.mdt_broker import Broker, Deliver, Event, Keep, LocalBroker, RoundWriter

log = logging.getLogger(__name__)

CHANNEL = "solent_mdt"
#: The room's snapshot as kept, read on the listener thread.
Fetch = Callable[[str], list[Event]]


class SharedBroker:
    def __init__(
        self, broadcast: Broadcast, keep: Keep, fetch: Fetch, ready: threading.Event | None
    ) -> None:
        self.broadcast = broadcast
        self.keep = keep
        self.fetch = fetch
        self._ready = ready  # set while the broadcast listens (None: always)
        self._rooms: dict[str, list[Deliver]] = {}  # touched on the event loop thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer = RoundWriter(self._round, "mdt-shared-publish")
        self._unsubscribe: Callable[[], None] | None = None

    # -- Broker -------------------------------------------------------------------------------

    def publish(self, room: str, event: Event) -> None:
        """Queue the event: numbered, kept and announced by one thread, off the event loop."""
        self._writer.put(room, event)

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
        self._writer.close()
        if self._unsubscribe is not None:
            self._unsubscribe()

    # -- publishing thread ----------------------------------------------------------------------

    def _round(self, by_room: dict[str, list[Event]]) -> None:
        self.keep(by_room, self._announce)

    def _announce(self, conn: Any, room: str, events: list[Event]) -> None:
        """In the keeping transaction: each event, or a reference when it is too large."""
        for event in events:
            try:
                self.broadcast.publish_in(conn, CHANNEL, {"room": room, "event": event})
            except ValueError:  # over NOTIFY's limit: receivers read the snapshot
                self.broadcast.publish_in(conn, CHANNEL, {"room": room, "ref": event.get("seq")})

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
            events = self._stored(room)
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


def open_broker(broadcast: Broadcast, keep: Keep, fetch: Fetch) -> Broker:
    """Rooms shared across nodes on PostgreSQL; in-process on the embedded default."""
    if isinstance(broadcast, PostgresBroadcast):
        return SharedBroker(broadcast, keep, fetch, broadcast.listening)
    return LocalBroker(keep)
