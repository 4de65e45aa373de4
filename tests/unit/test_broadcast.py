"""The in-process broadcast (embedded default) and cache invalidation (issue 16)."""

from __future__ import annotations

from typing import Any

import pytest

from solent.services.broadcast import LocalBroadcast
from solent.ttl_cache import TtlCache, invalidate_all


def test_local_broadcast_delivers_to_subscribers_of_the_channel_until_they_leave() -> None:
    bus = LocalBroadcast()
    got: list[tuple[str, dict[str, Any]]] = []
    leave = bus.subscribe("mdt_room_7", lambda p: got.append(("a", p)))
    bus.subscribe("mdt_room_8", lambda p: got.append(("b", p)))
    bus.publish("mdt_room_7", {"event": "slide", "index": 3})
    assert got == [("a", {"event": "slide", "index": 3})]
    leave()
    bus.publish("mdt_room_7", {"event": "slide", "index": 4})
    assert len(got) == 1


def test_broadcast_refuses_bad_channel_names_and_oversized_payloads() -> None:
    bus = LocalBroadcast()
    with pytest.raises(ValueError, match="channel names"):
        bus.publish("Room; DROP", {})
    with pytest.raises(ValueError, match="over 7900 bytes"):
        bus.publish("mdt_room_1", {"blob": "x" * 8000})


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    bus = LocalBroadcast()
    got: list[dict[str, Any]] = []

    def broken(_: dict[str, Any]) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe("c", broken)
    bus.subscribe("c", got.append)
    bus.publish("c", {"n": 1})
    assert got == [{"n": 1}]


def test_invalidate_all_makes_every_cached_answer_stale_at_once() -> None:
    cache: TtlCache[str] = TtlCache(3600)
    cache.put("user:alice", "clinician at ZZA and ZZB")
    assert cache.lookup("user:alice") == (True, "clinician at ZZA and ZZB")
    invalidate_all()
    assert cache.lookup("user:alice") == (False, None)
    # An answer loaded while a change was announced is not kept as fresh.
    loaded = cache.get("user:bob", lambda: (invalidate_all(), "old answer")[1])
    assert loaded == "old answer"
    assert cache.lookup("user:bob") == (False, None)
