"""Live MDT rooms: one presenter's view followed by every participant of that meeting.

Room logic with no I/O: the WebSocket adapter joins members (each with a ``send`` that queues a
message for its socket), hands over client messages and publishes the returned events (after
auditing a newly shown study). Every change goes out as an event through the ``Broker`` and is
applied when it comes back, so rooms stay separate (one broker room per meeting) and several
nodes share a room through a shared broker (services/mdt_shared.py).

Order: the broker numbers presenter and view events (``seq``, one order per room, set by the
database across nodes) and every node applies them in that order with the same rule
(``advance``): a view counts only if its author presents at that point of the order, a
presenter left vacant only if it is still the one that went. So a burst of claims and views
from several nodes ends the same everywhere, and the meeting keeps what the rooms show.

Liveness: each node announces its own members (``participants`` with its ``node``) when they
change and every ``heartbeat`` seconds; the room's participants are the union over the nodes
heard from within the ``lease`` (3 heartbeats). A node that stops (killed, cut off) drops out
of every room after the lease, and a presenter who is nobody's participant for a lease is
vacated, so the room can be claimed again.

Access: a member sees patient data only of the items it may see (``visible``, computed by the
MDT service when it joins); a view of another item reaches it as
``{"item_id": ..., "restricted": true}`` without UIDs or image position.

Measurements and the pointer are in patient coordinates (mm), so they land on the same point of
the image in every participant's window; a view keeps at most ``MAX_MEASUREMENTS`` of them, each
cut to its known keys, so what the room keeps and relays for a late joiner stays small.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from solent.services.mdt_broker import ORDERED, Broker, Event

MAX_MEASUREMENTS = 50  # on the shown image: enough for any reading, bounded for the room
# Measurement tools followers draw, with how many handles each has (an angle being drawn has 2).
MEASUREMENT_POINTS = {"Length": (2, 2), "Angle": (2, 3), "EllipticalROI": (4, 4)}
MAX_UID = 64  # DICOM UIDs; annotation UIDs are shorter
MAX_COORDINATE = 1e6  # mm from the patient origin: far beyond any scanner's field
MAX_ZOOM = 1000.0  # a pixel a thousand times its size: beyond any reading
VIEW_KEYS = ("item_id", "study_uid", "series_uid", "image_index", "voi", "camera", "measurements")
HEARTBEAT = 2.0  # seconds between a node's announcements of its members (default)


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
    opened: float = 0.0  # when this node opened the room (its clock)
    state: dict[str, Any] | None = None
    seq: int = 0  # the last numbered event applied
    # A presenter set by this node whose event has not come back yet (name, when): accepted
    # as presenting meanwhile, so its next message is not refused; the order still decides.
    pending: tuple[str, float] | None = None
    # A presenter this node vacated (its connection went) whose vacancy has not come back yet:
    # a new connection of that person is welcomed as to a vacant room, so its page claims the
    # role again (the claim follows the vacancy in the order) instead of believing it presents.
    vacating: str | None = None
    members: dict[int, Member] = field(default_factory=dict)
    remote: dict[str, list[str]] = field(default_factory=dict)  # other node -> its members
    seen: dict[str, float] = field(default_factory=dict)  # other node -> last heard (our clock)
    listed: list[str] = field(default_factory=list)  # the participants last sent to members
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
    shown: tuple[int, str] | None = None  # (item id, study UID) newly shown by the presenter


def advance(presenter: str | None, event: Event) -> tuple[str | None, bool]:
    """The room's presenter after a numbered event, and whether the event counts.

    The one rule every node (and the keeping of the meeting) applies in ``seq`` order: a view
    counts only if its author presents; a presenter event with ``was`` (vacating a presenter
    who went) only if that one still presents."""
    kind = event.get("type")
    if kind == "view":
        return presenter, event.get("by") == presenter
    if kind == "presenter":
        if "was" in event and event["was"] != presenter:
            return presenter, False
        return event.get("presenter"), True
    return presenter, True


class LiveHub:
    def __init__(
        self,
        broker: Broker,
        node: str | None = None,
        *,
        heartbeat: float = HEARTBEAT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._broker = broker
        self.node = node or uuid.uuid4().hex[:12]  # tells this process's announcements apart
        self.heartbeat = heartbeat
        self.lease = 3 * heartbeat
        self.clock = clock
        self.rooms: dict[int, Room] = {}
        self._ids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None

    @staticmethod
    def topic(meeting_id: int) -> str:
        return f"mdt:{meeting_id}"

    @staticmethod
    def meeting_of(topic: str) -> int:
        return int(topic.removeprefix("mdt:"))

    def stored(self, meeting_id: int) -> list[Event]:
        """The room's kept snapshot (blocking: a worker thread, after subscribing)."""
        return self._broker.stored(self.topic(meeting_id))

    def close(self) -> None:
        self._broker.close()

    # -- membership -----------------------------------------------------------------------------

    def prepare(self, meeting_id: int, presenter: str | None) -> bool:
        """Open the meeting's room here (listening to its events); True if it was not open."""
        if meeting_id in self.rooms:
            return False
        room = Room(meeting_id, presenter, opened=self.clock())
        self.rooms[meeting_id] = room
        room.unsubscribe = self._broker.subscribe(
            self.topic(meeting_id), lambda e: self._apply(meeting_id, e)
        )
        self._keep_ticking()
        return True

    def restore(self, meeting_id: int, events: list[Event]) -> None:
        """Apply the room's stored snapshot to a room just opened here: one older than what
        arrived meanwhile is ignored."""
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
        presenter_now = None if room.vacating == room.presenter else room.presenter
        welcome = {
            "type": "welcome",
            "you": member.name,
            "presenter": presenter_now,
            "participants": room.participants(),
            "state": _redact(room.state, member),
            "seq": room.seq,
        }
        member.send(welcome)
        self._announce_members(meeting_id, room)
        self._show_participants(room)
        return welcome

    def leave(self, meeting_id: int, member: Member) -> None:
        room = self.rooms.get(meeting_id)
        if room is None:
            return
        # Also when it is no longer a member: one dropped as too slow (`_fan_out`) has left
        # the members already, and leaving is when the others learn it went.
        room.members.pop(member.conn_id, None)
        if room.presenter == member.name and member.name not in room.participants():
            self._publish(meeting_id, self._vacate(room, member.name))
        self._announce_members(meeting_id, room)
        self._show_participants(room)
        if not room.members:  # nobody here any more: stop following the room on this node
            if room.unsubscribe is not None:
                room.unsubscribe()
            del self.rooms[meeting_id]

    def _announce_members(self, meeting_id: int, room: Room) -> None:
        self._publish(
            meeting_id, {"type": "participants", "node": self.node, "members": room.local()}
        )

    def _vacate(self, room: Room, name: str) -> Event:
        room.vacating = name
        return {"type": "presenter", "presenter": None, "was": name, "node": self.node}

    # -- liveness -------------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """Every ``heartbeat``: announce this node's members of each open room, drop the nodes
        not heard from within the lease, vacate a presenter who is nobody's participant."""
        now = self.clock() if now is None else now
        for meeting_id, room in list(self.rooms.items()):
            if room.members:
                self._announce_members(meeting_id, room)
            gone = [node for node, heard in room.seen.items() if now - heard > self.lease]
            for node in gone:
                room.remote.pop(node, None)
                del room.seen[node]
            if gone:
                self._show_participants(room)
            absent = room.presenter is not None and room.presenter not in room.participants()
            if absent and room.members and now - room.opened > self.lease:
                assert room.presenter is not None
                self._publish(meeting_id, self._vacate(room, room.presenter))

    def _keep_ticking(self) -> None:
        """Schedule the next ``tick`` on the running event loop while rooms are open (none
        without a loop: unit tests call ``tick`` themselves)."""
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(self.heartbeat, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.tick()
        finally:
            if self.rooms:
                self._keep_ticking()

    # -- client messages ------------------------------------------------------------------------

    def presenting(self, room: Room, name: str) -> bool:
        if room.presenter == name:
            return True
        pending = room.pending
        return pending is not None and pending[0] == name and self.clock() - pending[1] < self.lease

    def handle(self, meeting_id: int, member: Member, message: Any) -> Outcome:
        room = self.rooms.get(meeting_id)
        out = Outcome()
        if room is None or member.conn_id not in room.members:
            out.replies.append(_error("you are not in this meeting's room"))
            return out
        kind = message.get("type") if isinstance(message, dict) else None
        presenting = self.presenting(room, member.name)
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
            out.events.append({"type": "view", "state": state, "by": member.name})
        elif kind == "pointer":
            if not presenting:
                out.replies.append(_error("only the presenter can point"))
                return out
            point = message.get("point")
            if point is not None and not _point(point):
                out.replies.append(
                    _error("pointer point must be [x, y, z] in mm (patient coordinates) or null")
                )
                return out
            shown = None if point is None else [float(v) for v in point]
            out.events.append({"type": "pointer", "point": shown})
        elif kind == "handover":
            if not (presenting or member.coordinator):
                out.replies.append(_error("only the presenter or the coordinator can hand over"))
                return out
            to = message.get("to")
            if not isinstance(to, str) or to not in room.participants():
                out.replies.append(_error("hand over to someone in the meeting (see participants)"))
                return out
            self._set_presenter(room, to, out)
        elif kind == "claim":
            if room.presenter is not None and not member.coordinator and not presenting:
                out.replies.append(_error(f"{room.presenter} is presenting; ask for a handover"))
                return out
            self._set_presenter(room, member.name, out)
        else:
            out.replies.append(_error("type must be view, pointer, handover or claim"))
        return out

    def _set_presenter(self, room: Room, name: str, out: Outcome) -> None:
        room.pending = (name, self.clock())
        out.events.append({"type": "presenter", "presenter": name, "node": self.node})

    def publish(self, meeting_id: int, events: list[Event]) -> None:
        """Send a handled message's events to the room (after the adapter audited them)."""
        for event in events:
            self._publish(meeting_id, event)

    # -- events ---------------------------------------------------------------------------------

    def _publish(self, meeting_id: int, event: Event) -> None:
        self._broker.publish(self.topic(meeting_id), event)

    def _apply(self, meeting_id: int, event: Event) -> None:
        """An event of this room arrived from the broker: update the state, fan out."""
        room = self.rooms.get(meeting_id)
        if room is None:
            return
        kind = event.get("type")
        if kind == "snapshot":
            self._snapshot(room, event)
            return
        if kind == "participants":
            self._participants(meeting_id, room, event)
            return
        if kind in ORDERED:
            seq = int(event.get("seq", 0))
            if seq <= room.seq:
                return  # older than what this room shows (read from the meeting meanwhile)
            room.seq = seq
            if kind == "presenter" and event.get("node") == self.node:
                pending = room.pending
                if pending is not None and pending[0] == event.get("presenter"):
                    room.pending = None  # our own change is in the order now
            if kind == "presenter" and event.get("was") == room.vacating:
                room.vacating = None  # the vacancy is in the order now
            room.presenter, counts = advance(room.presenter, event)
            if not counts:
                return
        if kind == "view":
            room.state = event["state"]
            self._fan_out(room, event)
        elif kind == "presenter":
            self._fan_out(room, {"type": "presenter", "presenter": room.presenter})
        else:
            self._fan_out(room, event)

    def _snapshot(self, room: Room, snap: Event) -> None:
        """The room as the meeting keeps it (presenter, latest view, last ``seq``)."""
        seq = int(snap.get("seq", 0))
        if seq < room.seq:
            return
        room.seq = seq
        if snap.get("presenter") != room.presenter:
            room.presenter = snap.get("presenter")
            self._fan_out(room, {"type": "presenter", "presenter": room.presenter})
        view = snap.get("view")
        if isinstance(view, dict) and view.get("state") != room.state:
            room.state = view["state"]
            self._fan_out(room, view)

    def _fan_out(self, room: Room, event: Event) -> None:
        slow = []
        for member in list(room.members.values()):
            message = event
            if event.get("type") == "view":
                message = {**event, "state": _redact(event["state"], member)}
            elif event.get("type") == "pointer" and _redact(room.state, member) != room.state:
                # Where the presenter points is a place in the patient's images (patient
                # coordinates, mm): nothing of it for a member the current item is hidden from.
                message = {**event, "point": None}
            if not member.send(message):
                slow.append(member)
        for member in slow:  # a follower that cannot keep up is dropped, not waited for
            room.members.pop(member.conn_id, None)

    def _participants(self, meeting_id: int, room: Room, event: Event) -> None:
        """A node announced its members: what the clients see is everyone on every node."""
        node, members = event.get("node"), event.get("members")
        if not isinstance(node, str) or node == self.node or not isinstance(members, list):
            return
        known = node in room.remote
        if members:
            room.remote[node] = [str(m) for m in members]
            room.seen[node] = self.clock()
        else:
            room.remote.pop(node, None)
            room.seen.pop(node, None)
        if not known and members and room.members:
            self._announce_members(meeting_id, room)  # so the new node knows us too
        self._show_participants(room)

    def _show_participants(self, room: Room) -> None:
        """Tell the members who takes part, when that changed."""
        now = room.participants()
        if now != room.listed:
            room.listed = now
            self._fan_out(room, {"type": "participants", "participants": now})


def _error(detail: str) -> Event:
    return {"type": "error", "detail": detail}


def _number(v: Any) -> bool:
    """A finite number within bounds; an int too large for a float is no such number (and
    math.isfinite would raise OverflowError on it)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    return abs(v) <= MAX_COORDINATE and math.isfinite(v)


def _point(v: Any) -> bool:
    """A point in patient coordinates (mm): where it is on the image, whatever each
    participant's window size, zoom or pan."""
    return isinstance(v, list) and len(v) == 3 and all(_number(c) for c in v)


def _uid(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= MAX_UID


def _check_measurement(m: Any) -> tuple[dict[str, Any] | None, str]:
    """One measurement as followers draw it, limited to the known keys (bounded size)."""
    if not isinstance(m, dict):
        return None, "each measurement must be an object"
    tool = m.get("tool")
    if tool not in MEASUREMENT_POINTS:
        return None, f"measurement tool must be one of {', '.join(MEASUREMENT_POINTS)}"
    if not (_uid(m.get("uid")) and _uid(m.get("sop_uid"))):
        return None, f"measurement uid and sop_uid must be strings of 1 to {MAX_UID} characters"
    frame = m.get("frame")
    if not isinstance(frame, int) or isinstance(frame, bool) or frame < 1:
        return None, "measurement frame must be a whole number from 1"
    points = m.get("points")
    least, most = MEASUREMENT_POINTS[tool]
    if not (isinstance(points, list) and least <= len(points) <= most and all(map(_point, points))):
        counted = str(least) if least == most else f"{least} to {most}"
        return None, f"a {tool} measurement has {counted} points [x, y, z] in mm"
    text_box = m.get("text_box")
    if text_box is not None and not _point(text_box):
        return None, "measurement text_box must be [x, y, z] in mm or null"
    return {
        "uid": m["uid"],
        "tool": tool,
        "sop_uid": m["sop_uid"],
        "frame": frame,
        "points": [[float(c) for c in p] for p in points],
        "text_box": None if text_box is None else [float(c) for c in text_box],
    }, ""


def _check_camera(c: Any) -> tuple[dict[str, Any] | None, str]:
    """The presenter's camera, as the viewer sends and applies it (docs/viewer.md)."""
    wanted = (
        "camera must be {zoom, pan: [x, y], focal: [x, y, z] or null, rotation,"
        " flip_h, flip_v, invert}"
    )
    if not isinstance(c, dict):
        return None, wanted
    zoom: Any = c.get("zoom")
    pan, focal = c.get("pan"), c.get("focal")
    if not (_number(zoom) and 0 < zoom <= MAX_ZOOM):
        return None, f"camera.zoom must be a number above 0 and at most {MAX_ZOOM:g}"
    if not (isinstance(pan, list) and len(pan) == 2 and all(map(_number, pan))):
        return None, wanted
    if focal is not None and not _point(focal):
        return None, wanted
    if not _number(c.get("rotation")):
        return None, wanted
    flags = {k: c.get(k) for k in ("flip_h", "flip_v", "invert")}
    if not all(isinstance(v, bool) for v in flags.values()):
        return None, wanted
    out = {"zoom": zoom, "pan": list(pan), "rotation": c["rotation"], **flags}
    if "focal" in c:
        out["focal"] = None if focal is None else list(focal)
    return out, ""


def _redact(state: dict[str, Any] | None, member: Member) -> dict[str, Any] | None:
    """The view as this member may have it: whole when it may see the item's patient and the
    study shown, else only that the item is restricted."""
    if state is None:
        return None
    item = state.get("item_id")
    if isinstance(item, int) and item in member.visible:
        study = state.get("study_uid")
        if study is None or study in member.visible[item]:
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
    if study is not None and (not isinstance(study, str) or study not in member.visible[item]):
        return None, "study_uid must be one of the item's studies"
    if state.get("series_uid") is not None and not _uid(state["series_uid"]):
        return None, f"series_uid must be a string of 1 to {MAX_UID} characters"
    index = state.get("image_index")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
        return None, "image_index must be a whole number from 0"
    checked = {k: state[k] for k in VIEW_KEYS if k in state}
    # W/L and camera as every follower applies them: typed, bounded, nothing else relayed.
    if state.get("voi") is not None:
        voi = state["voi"]
        if not isinstance(voi, dict) or not all(_number(voi.get(k)) for k in ("center", "width")):
            return None, "voi must be {center, width} (numbers)"
        checked["voi"] = {"center": voi["center"], "width": voi["width"]}
    if state.get("camera") is not None:
        camera, problem = _check_camera(state["camera"])
        if camera is None:
            return None, problem
        checked["camera"] = camera
    measurements = state.get("measurements")
    if measurements is not None:
        if not isinstance(measurements, list) or len(measurements) > MAX_MEASUREMENTS:
            return None, f"measurements must be a list of at most {MAX_MEASUREMENTS}"
        kept = []
        for m in measurements:
            one, problem = _check_measurement(m)
            if one is None:
                return None, problem
            kept.append(one)
        checked["measurements"] = kept
    return checked, ""
