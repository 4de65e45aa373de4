"""Fan-out of MDT room events: the one seam between the live rooms and how nodes talk.

``LiveHub`` publishes every room event through a ``Broker`` and applies what the broker
delivers, so a room's state is rebuilt from the same events on every node. The default
``LocalBroker`` delivers within this process; ``SharedBroker`` (services/mdt_shared.py) over
PostgreSQL LISTEN/NOTIFY serves several nodes with the same methods (deliveries arrive on the
event loop thread that subscribed, in publish order per room).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

Event = dict[str, Any]
Deliver = Callable[[Event], None]


class Broker(Protocol):
    def publish(self, room: str, event: Event) -> None:
        """Send ``event`` to every subscriber of ``room`` (on every node)."""

    def subscribe(self, room: str, deliver: Deliver) -> Callable[[], None]:
        """Call ``deliver`` for each event of ``room``; returns the unsubscribe function."""

    def stored(self, room: str) -> list[Event]:
        """The room's events kept for a node that opens it after it started (blocking: call
        from a worker thread once subscribed); [] when rooms live in one process only."""

    def close(self) -> None:
        """Finish sending what was published."""


class LocalBroker:
    """In-process broker: a publish calls the room's subscribers synchronously, in order.

    Used from the event loop thread only (WebSocket handlers), so it needs no lock.
    """

    def __init__(self) -> None:
        self._rooms: dict[str, list[Deliver]] = {}

    def publish(self, room: str, event: Event) -> None:
        for deliver in list(self._rooms.get(room, ())):
            deliver(event)

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
        pass

    def rooms(self) -> int:
        return len(self._rooms)
