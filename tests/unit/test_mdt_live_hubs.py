"""Room logic of several nodes (issue 16), with no network: two ``LiveHub`` s (two nodes) on one
in-order broker. The PostgreSQL-backed run is tests/interop/test_mdt_live_nodes.py."""

from __future__ import annotations

from typing import Any

from solent.services.mdt_broker import LocalBroker
from solent.services.mdt_live import LiveHub, Member

STUDY = "1.2.3"
VISIBLE = {7: frozenset({STUDY})}


def member(
    name: str, inbox: list[dict[str, Any]], visible: Any = VISIBLE, coordinator: bool = False
) -> Member:
    def send(message: dict[str, Any]) -> bool:
        inbox.append(message)
        return True

    return Member(name, coordinator, visible, send)


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
    assert [m["seq"] for m in b_in if m["type"] == "view"] == [2, 3]  # the claim was 1

    # Handover to a member of the other node; its views reach the first node.
    node1.publish(1, node1.handle(1, a, {"type": "handover", "to": "b"}).events)
    out = node2.handle(1, b, {"type": "view", "state": {"item_id": 7, "image_index": 0}})
    assert not out.replies
    node2.publish(1, out.events)
    assert (last(a_in, "view")["seq"], last(a_in, "view")["by"]) == (5, "b")
    assert node1.handle(1, a, {"type": "view", "state": {"item_id": 7}}).replies

    # A snapshot older than the room's (read from the meeting meanwhile) is ignored.
    old = {"type": "view", "state": {"item_id": 7}, "seq": 2, "by": "a"}
    node1.restore(1, [{"type": "snapshot", "presenter": "a", "seq": 3, "view": old}])
    assert node1.rooms[1].presenter == "b"
    assert node1.rooms[1].state == {"item_id": 7, "image_index": 0}

    # A third member who may not see item 7 is told it is restricted, whatever node.
    c = member("c", c_in, {})
    node2.join(1, c, None)
    assert c_in[0]["state"] == {"item_id": 7, "restricted": True}

    # When a node's members all leave, the other node stops listing them.
    node1.leave(1, a)
    assert last(b_in, "participants")["participants"] == ["b", "c"]
    assert 1 not in node1.rooms


class DatabaseOrder:
    """A broker that holds what the nodes publish and delivers it later, numbered, in one
    order for every node: what the shared broker's keeping transaction does on PostgreSQL."""

    def __init__(self) -> None:
        self.held: list[tuple[str, dict[str, Any]]] = []
        self.subs: dict[str, list[Any]] = {}
        self.seq = 0

    def publish(self, room: str, event: dict[str, Any]) -> None:
        self.held.append((room, event))

    def subscribe(self, room: str, deliver: Any) -> Any:
        self.subs.setdefault(room, []).append(deliver)
        return lambda: self.subs[room].remove(deliver)

    def stored(self, room: str) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        pass

    def deliver(self, order: list[int] | None = None) -> None:
        held, self.held = self.held, []
        for i in order if order is not None else range(len(held)):
            room, event = held[i]
            if event["type"] in ("view", "presenter"):
                self.seq += 1
                event["seq"] = self.seq
            for deliver in list(self.subs.get(room, ())):
                deliver(event)


def shown(inbox: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """What a client was told about who presents and what is shown, in order."""
    out: list[tuple[str, Any]] = []
    for m in inbox:
        if m["type"] == "presenter":
            out.append(("presenter", m["presenter"]))
        elif m["type"] == "view":
            out.append(("view", (m["by"], m["state"]["image_index"])))
    return out


def test_a_burst_from_two_nodes_ends_the_same_on_both() -> None:
    """Two coordinators claim at once on two nodes and each sends a view before hearing the
    other: whatever order the database gives, both nodes show the same presenter and the same
    view, and only the views of whoever presents at their place in the order count."""
    for order in ([0, 1, 2, 3], [1, 0, 3, 2], [0, 1, 3, 2], [1, 3, 0, 2]):
        bus = DatabaseOrder()
        node1, node2 = LiveHub(bus, "n1"), LiveHub(bus, "n2")
        inboxes: dict[str, list[dict[str, Any]]] = {n: [] for n in ("a", "b", "f1", "f2")}
        a, b = (member(n, inboxes[n], coordinator=True) for n in ("a", "b"))
        f1, f2 = member("f1", inboxes["f1"]), member("f2", inboxes["f2"])
        node1.join(1, a, None)
        node1.join(1, f1, None)
        node2.join(1, b, None)
        node2.join(1, f2, None)
        while bus.held:  # the nodes learn each other's members
            bus.deliver()
        claims = [node1.handle(1, a, {"type": "claim"}), node2.handle(1, b, {"type": "claim"})]
        views = [  # sent before either claim came back: each node takes its own claim at once
            node1.handle(1, a, {"type": "view", "state": {"item_id": 7, "image_index": 1}}),
            node2.handle(1, b, {"type": "view", "state": {"item_id": 7, "image_index": 2}}),
        ]
        assert not any(out.replies for out in claims + views)
        node1.publish(1, claims[0].events)  # held 0
        node2.publish(1, claims[1].events)  # held 1
        node1.publish(1, views[0].events)  # held 2
        node2.publish(1, views[1].events)  # held 3
        bus.deliver(order)
        r1, r2 = node1.rooms[1], node2.rooms[1]
        assert (r1.presenter, r1.state, r1.seq) == (r2.presenter, r2.state, r2.seq), order
        assert shown(inboxes["f1"]) == shown(inboxes["f2"]), order
        winner = r1.presenter
        last_view = [v for v in shown(inboxes["f1"]) if v[0] == "view"][-1]
        assert last_view[1][0] == winner, order  # the loser's view, if later, did not count
        assert r1.pending is None and r2.pending is None


def test_a_silent_node_drops_out_and_its_presenter_can_be_replaced() -> None:
    now = [0.0]
    bus = LocalBroker()
    node1 = LiveHub(bus, "n1", heartbeat=2.0, clock=lambda: now[0])
    node2 = LiveHub(bus, "n2", heartbeat=2.0, clock=lambda: now[0])
    a_in: list[dict[str, Any]] = []
    b_in: list[dict[str, Any]] = []
    a, b = member("a", a_in), member("b", b_in)
    node1.join(1, a, None)
    node2.join(1, b, None)
    node2.publish(1, node2.handle(1, b, {"type": "claim"}).events)
    assert last(a_in, "presenter")["presenter"] == "b"

    for t in (2.0, 4.0, 6.0, 8.0):  # node 2 beats: it stays, past several leases' worth
        now[0] = t
        node2.tick()
        node1.tick()
    assert last(a_in, "participants")["participants"] == ["a", "b"]
    assert node1.handle(1, a, {"type": "claim"}).replies  # b presents and is alive

    # Node 2 goes silent (killed): within the lease (3 heartbeats) node 1 drops its members
    # and vacates its presenter; a plain participant can then claim the room.
    now[0] = 8.0 + 6.0 + 0.1
    node1.tick()
    assert last(a_in, "participants")["participants"] == ["a"]
    assert last(a_in, "presenter")["presenter"] is None
    assert node1.rooms[1].presenter is None
    assert node1.handle(1, a, {"type": "handover", "to": "b"}).replies  # b is gone
    node1.publish(1, node1.handle(1, a, {"type": "claim"}).events)
    assert node1.rooms[1].presenter == "a"
    # A vacancy announced late (by another node) does not unseat the new presenter.
    node1.publish(1, [{"type": "presenter", "presenter": None, "was": "b", "node": "n3"}])
    assert node1.rooms[1].presenter == "a"


CAMERA = {"zoom": 1.5, "pan": [3, -4], "rotation": 90, "flip_h": False, "flip_v": True}
CAMERA |= {"invert": False}


def test_a_view_reaches_the_room_only_as_the_viewer_applies_it() -> None:
    """W/L and camera are relayed typed and bounded, nothing else in them: what followers get
    (and the meeting keeps for late joiners) is what their viewer applies. A presenter's view
    with a camera or W/L no viewer can apply is refused to the sender alone."""
    hub = LiveHub(LocalBroker(), "n1")
    p_in: list[dict[str, Any]] = []
    f_in: list[dict[str, Any]] = []
    p, f = member("p", p_in), member("f", f_in)
    hub.join(1, p, None)
    hub.join(1, f, None)
    hub.publish(1, hub.handle(1, p, {"type": "claim"}).events)
    view = {"item_id": 7, "study_uid": STUDY, "series_uid": "1.2.3.4", "image_index": 2}
    padded = {
        **view,
        "voi": {"center": 40, "width": 400, "note": "x" * 60_000},
        "camera": {**CAMERA, "focal": [1, 2, 3], "script": {"deep": ["x"] * 1000}},
    }
    out = hub.handle(1, p, {"type": "view", "state": padded})
    assert not out.replies
    hub.publish(1, out.events)
    got = last(f_in, "view")["state"]
    assert got == {
        **view,
        "voi": {"center": 40, "width": 400},
        "camera": {**CAMERA, "pan": [3, -4], "focal": [1, 2, 3]},
    }
    assert hub.rooms[1].state == got

    bad_views = [
        {**view, "camera": {"zoom": "abc"}},
        {**view, "camera": {**CAMERA, "zoom": 0}},
        {**view, "camera": {**CAMERA, "zoom": float("inf")}},
        {**view, "camera": {k: v for k, v in CAMERA.items() if k != "flip_h"}},
        {**view, "camera": {**CAMERA, "invert": "yes"}},
        {**view, "camera": {**CAMERA, "pan": [1, 2, 3]}},
        {**view, "camera": {**CAMERA, "focal": [1, "a", 3]}},
        {**view, "camera": "zoomed"},
        {**view, "voi": {"center": "x", "width": 400}},
        {**view, "voi": {"center": 40}},
        {**view, "voi": [40, 400]},
        {**view, "series_uid": "1" * 65},
        {**view, "series_uid": ""},
    ]
    for bad in bad_views:
        before = len(f_in)
        out = hub.handle(1, p, {"type": "view", "state": bad})
        assert out.replies and out.replies[0]["type"] == "error" and not out.events, bad
        assert len(f_in) == before
    assert hub.rooms[1].state == got


def test_a_follower_dropped_as_too_slow_leaves_the_room_for_everyone() -> None:
    """A member whose queue is full is dropped while the room fans out; when its connection
    then ends, the others are told it left, and a room nobody is in any more is closed."""
    hub = LiveHub(LocalBroker(), "n1")
    p_in: list[dict[str, Any]] = []
    p = member("p", p_in)
    slow = Member("slow", False, VISIBLE, lambda message: False)  # its queue is full
    hub.join(1, p, None)
    hub.join(1, slow, None)
    assert last(p_in, "participants")["participants"] == ["p", "slow"]
    hub.publish(1, hub.handle(1, p, {"type": "claim"}).events)  # fanned out: slow is dropped
    hub.leave(1, slow)  # what the adapter does when the dropped connection's writer ends
    assert last(p_in, "participants")["participants"] == ["p"]
    hub.leave(1, p)
    assert 1 not in hub.rooms


def test_a_presenter_back_before_its_vacancy_is_ordered_claims_again() -> None:
    """The presenter's connection drops and its page connects again before the vacancy came back
    from the order: the new connection is welcomed to a vacant room (so the page claims), and the
    claim, ordered after the vacancy, makes it the presenter whose views the room follows."""
    bus = DatabaseOrder()
    hub = LiveHub(bus, "n1")
    p_in: list[dict[str, Any]] = []
    f_in: list[dict[str, Any]] = []
    p, f = member("p", p_in), member("f", f_in)
    hub.join(1, p, None)
    hub.join(1, f, None)
    hub.publish(1, hub.handle(1, p, {"type": "claim"}).events)
    bus.deliver()
    assert hub.rooms[1].presenter == "p"

    hub.leave(1, p)  # the vacancy is published, not yet ordered
    again_in: list[dict[str, Any]] = []
    again = member("p", again_in)
    welcome = hub.join(1, again, "p")
    assert welcome["presenter"] is None
    out = hub.handle(1, again, {"type": "claim"})
    assert not out.replies
    hub.publish(1, out.events)
    bus.deliver()
    assert hub.rooms[1].presenter == "p"
    assert last(f_in, "presenter")["presenter"] == "p"
    hub.publish(1, hub.handle(1, again, {"type": "view", "state": {"item_id": 7}}).events)
    bus.deliver()
    assert last(f_in, "view")["by"] == "p"
    # Later welcomes say who presents again.
    assert hub.join(1, member("g", []), None)["presenter"] == "p"


def test_a_view_or_pointer_of_the_wrong_shape_is_refused_not_a_dropped_connection() -> None:
    """A study_uid that is a list or an object (unhashable: TypeError on the visible set) and
    a number too large for a float (OverflowError in math.isfinite) raised out of the room's
    handler, which ended the presenter's connection with no error message."""
    hub = LiveHub(LocalBroker(), "n1")
    p_in: list[dict[str, Any]] = []
    p = member("p", p_in)
    hub.join(1, p, None)
    hub.publish(1, hub.handle(1, p, {"type": "claim"}).events)
    huge = 10**400
    for message in (
        {"type": "view", "state": {"item_id": 7, "study_uid": [STUDY]}},
        {"type": "view", "state": {"item_id": 7, "study_uid": {"x": 1}}},
        {"type": "view", "state": {"item_id": 7, "voi": {"center": huge, "width": 1}}},
        {"type": "view", "state": {"item_id": 7, "camera": {**CAMERA, "zoom": huge}}},
        {"type": "pointer", "point": [huge, 0, 0]},
        {"type": "handover", "to": ["p"]},
        {"type": ["view"]},
    ):
        out = hub.handle(1, p, message)
        assert out.replies and out.replies[0]["type"] == "error", message
        assert not out.events
