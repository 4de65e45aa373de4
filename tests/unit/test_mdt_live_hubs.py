"""Room logic of several nodes (issue 16), with no network: two ``LiveHub`` s (two nodes) on one
in-order broker. The PostgreSQL-backed run is tests/interop/test_mdt_live_nodes.py."""

from __future__ import annotations

from typing import Any

from solent.services.mdt_broker import LocalBroker
from solent.services.mdt_live import LiveHub, Member

STUDY = "1.2.3"
VISIBLE = {7: frozenset({STUDY})}


def member(name: str, inbox: list[dict[str, Any]], visible: Any = VISIBLE) -> Member:
    def send(message: dict[str, Any]) -> bool:
        inbox.append(message)
        return True

    return Member(name, False, visible, send)


def last(inbox: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(m for m in reversed(inbox) if m["type"] == kind)


def test_members_of_two_nodes_share_one_room() -> None:
    bus = LocalBroker()
    node1, node2 = LiveHub(bus, "n1"), LiveHub(bus, "n2")
    a_in: list[dict[str, Any]] = []
    b_in: list[dict[str, Any]] = []
    c_in: list[dict[str, Any]] = []
    a, b = member("a", a_in), member("b", b_in)
    node1.join(1, a, None)
    node2.join(1, b, None)
    assert last(a_in, "participants")["participants"] == ["a", "b"]
    assert last(b_in, "participants")["participants"] == ["a", "b"]

    out = node1.handle(1, a, {"type": "claim"})
    node1.publish(1, out.events)
    assert last(b_in, "presenter")["presenter"] == "a"
    for index in (1, 2):
        view = {"item_id": 7, "study_uid": STUDY, "image_index": index}
        node1.publish(1, node1.handle(1, a, {"type": "view", "state": view}).events)
    assert [m["seq"] for m in b_in if m["type"] == "view"] == [1, 2]

    # Handover to a member of the other node; its views reach the first node.
    node1.publish(1, node1.handle(1, a, {"type": "handover", "to": "b"}).events)
    out = node2.handle(1, b, {"type": "view", "state": {"item_id": 7, "image_index": 0}})
    assert not out.replies
    node2.publish(1, out.events)
    assert (last(a_in, "view")["seq"], last(a_in, "view")["by"]) == (3, "b")
    assert node1.handle(1, a, {"type": "view", "state": {"item_id": 7}}).replies

    # A view older than the room's (read from the meeting meanwhile) is ignored.
    node1.restore(1, [{"type": "view", "state": {"item_id": 7}, "seq": 2, "by": "a"}])
    assert node1.rooms[1].state == {"item_id": 7, "image_index": 0}

    # A third member who may not see item 7 is told it is restricted, whatever node.
    c = member("c", c_in, {})
    node2.join(1, c, None)
    assert c_in[0]["state"] == {"item_id": 7, "restricted": True}

    # When a node's members all leave, the other node stops listing them.
    node1.leave(1, a)
    assert last(b_in, "participants")["participants"] == ["b", "c"]
    assert 1 not in node1.rooms
