"""The shared MDT broker (issue 16) over the in-process broadcast, with no database: events are
numbered and kept, then announced in the keeping round, and come back on the event loop in
order; one too large for a notification is announced by reference and the snapshot read
instead; a resync re-reads every open room."""

from __future__ import annotations

import asyncio
from typing import Any

from solent.services.broadcast import LocalBroadcast
from solent.services.mdt_broker import Announce
from solent.services.mdt_shared import SharedBroker

Event = dict[str, Any]


def test_events_are_numbered_kept_then_announced_in_order_and_big_ones_by_reference() -> None:
    kept: dict[str, Event] = {}
    seqs: dict[str, int] = {}
    log: list[str] = []

    def keep(rooms: dict[str, list[Event]], announce: Announce | None) -> None:
        for room, events in rooms.items():
            for event in events:
                if event["type"] == "view":
                    seqs[room] = event["seq"] = seqs.get(room, 0) + 1
                    kept[room] = event
                    log.append(f"kept {event['seq']}")
            assert announce is not None
            announce(None, room, events)

    def fetch(room: str) -> list[Event]:
        if room not in kept:
            return []
        return [{"type": "snapshot", "presenter": None, "seq": seqs[room], "view": kept[room]}]

    bus = LocalBroadcast()
    broker = SharedBroker(bus, keep, fetch, None)
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
        broker.publish("mdt:1", {"type": "view", "state": {"image_index": 1}})
        broker.publish("mdt:1", {"type": "pointer", "x": 0.5, "y": 0.5})
        big = {"type": "view", "state": {"measurements": ["x" * 100] * 100}}
        broker.publish("mdt:1", big)  # over NOTIFY's 8000 bytes
        await asyncio.wait_for(done.wait(), 10)
        assert [e.get("seq") for e in got] == [1, None, 2]
        assert got[2]["type"] == "snapshot" and got[2]["view"] == big  # read back by reference
        assert log.index("kept 1") < log.index("delivered 1")
        assert other == []

        got.clear()  # after a lost listening connection: open rooms re-read what is kept
        bus.publish("solent_mdt", {"resync": True})
        await asyncio.sleep(0.1)
        assert got == fetch("mdt:1")

    try:
        asyncio.run(scenario())
    finally:
        broker.close()
