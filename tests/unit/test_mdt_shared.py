"""The shared MDT broker (issue 16) over the in-process broadcast, with no database: events are
written before they are announced and come back on the event loop in order; one too large for
a notification is announced by reference and read back; a resync re-reads every open room."""

from __future__ import annotations

import asyncio
from typing import Any

from solent.services.broadcast import LocalBroadcast
from solent.services.mdt_shared import SharedBroker

Event = dict[str, Any]


def test_events_are_kept_then_announced_in_order_and_big_ones_by_reference() -> None:
    kept: dict[str, Event] = {}
    log: list[str] = []

    def persist(rooms: dict[str, list[Event]]) -> None:
        for room, events in rooms.items():
            for event in events:
                if event["type"] == "view":
                    kept[room] = event
                    log.append(f"kept {event['seq']}")

    def fetch(room: str) -> list[Event]:
        return [kept[room]] if room in kept else []

    bus = LocalBroadcast()
    broker = SharedBroker(bus, persist, fetch, None)
    got: list[Event] = []
    other: list[Event] = []

    async def scenario() -> None:
        done = asyncio.Event()

        def deliver(event: Event) -> None:
            got.append(event)
            log.append(f"delivered {event.get('seq')}")
            if event.get("seq") == 2:
                done.set()

        broker.subscribe("mdt:1", deliver)
        broker.subscribe("mdt:2", other.append)
        broker.publish("mdt:1", {"type": "view", "seq": 1, "state": {"image_index": 1}})
        broker.publish("mdt:1", {"type": "pointer", "x": 0.5, "y": 0.5})
        big = {"type": "view", "seq": 2, "state": {"measurements": ["x" * 100] * 100}}
        broker.publish("mdt:1", big)  # over NOTIFY's 8000 bytes
        await asyncio.wait_for(done.wait(), 10)
        assert [e.get("seq") for e in got] == [1, None, 2]
        assert got[2] == big  # announced by reference, read back from what was kept
        assert log.index("kept 1") < log.index("delivered 1")
        assert other == []

        got.clear()  # after a lost listening connection: open rooms re-read what is kept
        bus.publish("solent_mdt", {"resync": True})
        await asyncio.sleep(0.1)
        assert got == [kept["mdt:1"]]

    try:
        asyncio.run(scenario())
    finally:
        broker.close()
