"""Live MDT rooms: one presenter's view followed by every participant of that meeting.

Pure room logic with no I/O: the WebSocket adapter joins members (each with a ``send`` that
queues a message for its socket), hands over client messages and acts on the returned
``Outcome`` (persist the presenter, audit a newly shown study). Every change goes out as an
event through the ``Broker`` and is applied when it comes back, so rooms stay separate
(one broker room per meeting) and several nodes share a room through a shared broker
(services/mdt_shared.py): each node announces its own members (``participants`` with its
``node``), and the room's participants are the union over the nodes.

Access: a member sees patient data only of the items it may see (``visible``, computed by the
MDT service when it joins); a view of another item reaches it as
``{"item_id": ..., "restricted": true}`` without UIDs or image position.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from solent.services.mdt_broker import Broker, Event

MAX_MEASUREMENTS = 200
VIEW_KEYS = ("item_id", "study_uid", "series_uid", "image_index", "voi", "camera", "measurements")


@dataclass
class Member:
    name: str
    coordinator: bool  # may hand over and claim at any time
    visible: Mapping[int, frozenset[str]]  # item id -> study UIDs this member may see
    send: Callable[[Event], bool]  # queue a message; False when the member cannot keep up
    conn_id: int = 0


@dataclass
class Room:
    meeting_id: int
    presenter: str | None
    state: dict[str, Any] | None = None
    seq: int = 0
    issued: int = 0  # the last seq this node gave a view (its echo may not be back yet)
    members: dict[int, Member] = field(default_factory=dict)
    remote: dict[str, list[str]] = field(default_factory=dict)  # other node -> its members
    unsubscribe: Callable[[], None] | None = None

    def local(self) -> list[str]:
        return sorted({m.name for m in self.members.values()})

    def participants(self) -> list[str]:
        names = {m.name for m in self.members.values()}
        for others in self.remote.values():
            names.update(others)
        return sorted(names)


@dataclass
class Outcome:
    """What the adapter must do after a client message."""

    replies: list[Event] = field(default_factory=list)  # to the sender only (errors)
    events: list[Event] = field(default_factory=list)  # for the room: ``publish`` them
    presenter_changed: bool = False
    presenter: str | None = None
    shown: tuple[int, str] | None = None  # (item id, study UID) newly shown by the presenter


class LiveHub:
    def __init__(self, broker: Broker, node: str | None = None) -> None:
        self.broker = broker
        self.node = node or uuid.uuid4().hex[:12]  # tells this process's announcements apart
        self.rooms: dict[int, Room] = {}
        self._ids = itertools.count(1)

    @staticmethod
    def topic(meeting_id: int) -> str:
        return f"mdt:{meeting_id}"

    @staticmethod
    def meeting_of(topic: str) -> int:
        return int(topic.removeprefix("mdt:"))

    # -- membership -----------------------------------------------------------------------------

    def prepare(self, meeting_id: int, presenter: str | None) -> bool:
        """Open the meeting's room here (listening to its events); True if it was not open."""
        if meeting_id in self.rooms:
            return False
        room = Room(meeting_id, presenter)
        self.rooms[meeting_id] = room
        room.unsubscribe = self.broker.subscribe(
            self.topic(meeting_id), lambda e: self._apply(meeting_id, e)
        )
        return True

    def restore(self, meeting_id: int, events: list[Event]) -> None:
        """Apply the room's stored events (presenter, latest view) to a room just opened here:
        a view older than what arrived meanwhile is ignored."""
        for event in events:
            self._apply(meeting_id, event)

    def discard_if_empty(self, meeting_id: int) -> None:
        room = self.rooms.get(meeting_id)
        if room is not None and not room.members:
            if room.unsubscribe is not None:
                room.unsubscribe()
            del self.rooms[meeting_id]

    def join(self, meeting_id: int, member: Member, presenter: str | None) -> Event:
        """Add a member; returns its welcome (current presenter, participants, state)."""
        self.prepare(meeting_id, presenter)
        room = self.rooms[meeting_id]
        member.conn_id = next(self._ids)
        room.members[member.conn_id] = member
        welcome = {
            "type": "welcome",
            "you": member.name,
            "presenter": room.presenter,
            "participants": room.participants(),
            "state": _redact(room.state, member),
            "seq": room.seq,
        }
        member.send(welcome)
        self._announce_members(meeting_id, room)
        return welcome

    def leave(self, meeting_id: int, member: Member) -> Outcome:
        room = self.rooms.get(meeting_id)
        out = Outcome()
        if room is None or room.members.pop(member.conn_id, None) is None:
            return out
        if room.presenter == member.name and member.name not in room.participants():
            self._publish(meeting_id, {"type": "presenter", "presenter": None})
            out.presenter_changed, out.presenter = True, None
        self._announce_members(meeting_id, room)
        if not room.members:  # nobody here any more: stop following the room on this node
            if room.unsubscribe is not None:
                room.unsubscribe()
            del self.rooms[meeting_id]
        return out

    def _announce_members(self, meeting_id: int, room: Room) -> None:
        self._publish(
            meeting_id, {"type": "participants", "node": self.node, "members": room.local()}
        )

    # -- client messages ------------------------------------------------------------------------

    def handle(self, meeting_id: int, member: Member, message: Any) -> Outcome:
        room = self.rooms.get(meeting_id)
        out = Outcome()
        if room is None or member.conn_id not in room.members:
            out.replies.append(_error("you are not in this meeting's room"))
            return out
        kind = message.get("type") if isinstance(message, dict) else None
        presenting = room.presenter == member.name
        if kind == "view":
            if not presenting:
                out.replies.append(_error("only the presenter can change the view"))
                return out
            state, problem = _check_view(message.get("state"), member)
            if state is None:
                out.replies.append(_error(problem))
                return out
            before = room.state or {}
            study = state.get("study_uid")
            if study and (before.get("item_id"), before.get("study_uid")) != (
                state["item_id"],
                study,
            ):
                out.shown = (int(state["item_id"]), str(study))
            room.issued = max(room.seq, room.issued) + 1
            event = {"type": "view", "state": state, "seq": room.issued, "by": member.name}
            out.events.append(event)
        elif kind == "pointer":
            if not presenting:
                out.replies.append(_error("only the presenter can point"))
                return out
            x, y = message.get("x"), message.get("y")
            if not (_unit(x) and _unit(y)):
                out.replies.append(_error("pointer x and y must be numbers from 0 to 1"))
                return out
            out.events.append({"type": "pointer", "x": float(x), "y": float(y)})
        elif kind == "handover":
            if not (presenting or member.coordinator):
                out.replies.append(_error("only the presenter or the coordinator can hand over"))
                return out
            to = message.get("to")
            if not isinstance(to, str) or to not in room.participants():
                out.replies.append(_error("hand over to someone in the meeting (see participants)"))
                return out
            self._set_presenter(meeting_id, to, out)
        elif kind == "claim":
            if room.presenter is not None and not member.coordinator and not presenting:
                out.replies.append(_error(f"{room.presenter} is presenting; ask for a handover"))
                return out
            self._set_presenter(meeting_id, member.name, out)
        else:
            out.replies.append(_error("type must be view, pointer, handover or claim"))
        return out

    def _set_presenter(self, meeting_id: int, name: str, out: Outcome) -> None:
        # Taken here at once, so the new presenter's next message is accepted before the
        # event comes back from other nodes; every node then applies the events in one order.
        self.rooms[meeting_id].presenter = name
        out.events.append({"type": "presenter", "presenter": name})
        out.presenter_changed, out.presenter = True, name

    def publish(self, meeting_id: int, events: list[Event]) -> None:
        """Send a handled message's events to the room (after the adapter audited them)."""
        for event in events:
            self._publish(meeting_id, event)

    # -- events ---------------------------------------------------------------------------------

    def _publish(self, meeting_id: int, event: Event) -> None:
        self.broker.publish(self.topic(meeting_id), event)

    def _apply(self, meeting_id: int, event: Event) -> None:
        """An event of this room arrived from the broker: update the state, fan out."""
        room = self.rooms.get(meeting_id)
        if room is None:
            return
        kind = event.get("type")
        if kind == "view":
            if int(event["seq"]) <= room.seq:
                return  # older than what this room shows (read from the meeting meanwhile)
            room.state, room.seq = event["state"], int(event["seq"])
        elif kind == "presenter":
            room.presenter = event["presenter"]
        elif kind == "participants":
            event = self._participants(meeting_id, room, event)
        slow = []
        for member in list(room.members.values()):
            message = event
            if kind == "view":
                message = {**event, "state": _redact(event["state"], member)}
            if not member.send(message):
                slow.append(member)
        for member in slow:  # a follower that cannot keep up is dropped, not waited for
            room.members.pop(member.conn_id, None)

    def _participants(self, meeting_id: int, room: Room, event: Event) -> Event:
        """A node announced its members: what the clients see is everyone on every node."""
        node, members = event.get("node"), event.get("members")
        if isinstance(node, str) and node != self.node and isinstance(members, list):
            known = node in room.remote
            if members:
                room.remote[node] = [str(m) for m in members]
            else:
                room.remote.pop(node, None)
            if not known and members and room.members:
                self._announce_members(meeting_id, room)  # so the new node knows us too
        return {"type": "participants", "participants": room.participants()}


def _error(detail: str) -> Event:
    return {"type": "error", "detail": detail}


def _unit(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1


def _redact(state: dict[str, Any] | None, member: Member) -> dict[str, Any] | None:
    if state is None:
        return None
    item = state.get("item_id")
    if isinstance(item, int) and item in member.visible:
        return state
    return {"item_id": item, "restricted": True}


def _check_view(state: Any, member: Member) -> tuple[dict[str, Any] | None, str]:
    """The presenter's view, limited to the known keys; or None and why it is refused."""
    if not isinstance(state, dict):
        return None, "state must be an object"
    item = state.get("item_id")
    if not isinstance(item, int) or isinstance(item, bool) or item not in member.visible:
        return None, "item_id must name an item of this meeting"
    study = state.get("study_uid")
    if study is not None and study not in member.visible[item]:
        return None, "study_uid must be one of the item's studies"
    for key in ("series_uid",):
        if state.get(key) is not None and not isinstance(state[key], str):
            return None, f"{key} must be a string"
    index = state.get("image_index")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
        return None, "image_index must be a whole number from 0"
    for key in ("voi", "camera"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            return None, f"{key} must be an object"
    voi = state.get("voi") or {}
    for key in ("center", "width"):
        v = voi.get(key)
        if v is not None and not (isinstance(v, int | float) and math.isfinite(v)):
            return None, f"voi.{key} must be a number"
    measurements = state.get("measurements")
    if measurements is not None and (
        not isinstance(measurements, list) or len(measurements) > MAX_MEASUREMENTS
    ):
        return None, f"measurements must be a list of at most {MAX_MEASUREMENTS}"
    return {k: state[k] for k in VIEW_KEYS if k in state}, ""
