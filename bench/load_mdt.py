"""MDT meetings inside the locust peak hour (`python -m bench load`, issue 16): each meeting has
one presenter scrolling (a view change every 1/rate s) and its followers, on real WebSockets
through the same address as the other users (HAProxy in front of 3 nodes, so a room's members
are spread over the nodes and its events cross them through PostgreSQL).

The presenter notes when it sent each view (``PLAN.sent_at``, by meeting and image index: a
view carries only what the room relays); every follower reports, per view received, the time
from that send to its receipt as a locust request "MDT presenter->follower" (same process, same
clock). Connection or protocol failures are locust failures. Users of a meeting are given out
in order as locust starts them (``fixed_count``: all of them whatever the weights of the other
users).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from locust import User, constant, task
from websockets.sync.client import ClientConnection, connect

MEETING_DATE = "2026-12-07"


@dataclass
class Plan:
    """The meetings of a run and who is in them (set before locust starts)."""

    base: str = ""  # ws://host:port of the service
    meetings: list[dict[str, Any]] = field(default_factory=list)  # id, item id, study UID
    presenters: list[str] = field(default_factory=list)  # token per meeting
    followers: list[list[str]] = field(default_factory=list)  # tokens per meeting
    sent: int = 0
    received: int = 0
    sent_at: dict[tuple[int, int], float] = field(default_factory=dict)  # (meeting, index)

    def url(self, meeting: int, token: str) -> str:
        return f"{self.base}/api/mdt/meetings/{self.meetings[meeting]['id']}/live?token={token}"


PLAN = Plan()


def users(meetings: int, followers: int) -> list[tuple[str, str]]:
    """(name, role) of the coordinator, presenters and followers of ``meetings`` meetings."""
    out = [("loadcoord", "mdt_coordinator")]
    out += [(f"mdt{m}p", "mdt_coordinator") for m in range(meetings)]  # may always claim
    out += [(f"mdt{m}f{f}", "clinician") for m in range(meetings) for f in range(followers)]
    return out


def make_meetings(http: Any, studies: list[tuple[str, str, str, str]], count: int) -> None:
    """Create ``count`` meetings (one seeded patient and study each) through the API, as the
    coordinator ``http`` is signed in as; kept in ``PLAN``."""
    for m in range(count):
        pid, study, _, _ = studies[m % len(studies)]
        body = {
            "title": f"Load MDT {m}",
            "date": MEETING_DATE,
            "team": f"team {m}",
            "items": [{"issuer": "ZZA", "patient_id": pid, "study_uids": [study]}],
        }
        r = http.post("/api/mdt/meetings", json=body)
        r.raise_for_status()
        made = r.json()
        item = made["items"][0]
        PLAN.meetings.append({"id": made["id"], "item": item["id"], "study": study})


def _fire(user: User, name: str, started: float, exc: Exception | None) -> None:
    user.environment.events.request.fire(
        request_type="WS",
        name=name,
        response_time=(time.perf_counter() - started) * 1000,
        response_length=0,
        exception=exc,
        context={},
    )


def _join(user: User, url: str) -> ClientConnection | None:
    """Connected and seated (the welcome came); None after reporting a failure."""
    started = time.perf_counter()
    try:
        ws = connect(url, open_timeout=30, max_size=2**20)
        while json.loads(ws.recv(timeout=30))["type"] != "welcome":
            pass
    except Exception as exc:
        _fire(user, "MDT join", started, exc)
        return None
    _fire(user, "MDT join", started, None)
    return ws


class Presenter(User):
    fixed_count = 0  # set to the number of meetings
    rate: ClassVar[float] = 2.0  # view changes per second
    wait_time = constant(0.5)
    _next: ClassVar[itertools.count[int]] = itertools.count()

    def on_start(self) -> None:
        self.meeting = next(Presenter._next) % len(PLAN.meetings)
        self.index = 0
        self.ws = _join(self, PLAN.url(self.meeting, PLAN.presenters[self.meeting]))
        if self.ws is not None:
            self.ws.send(json.dumps({"type": "claim"}))

    def on_stop(self) -> None:
        if self.ws is not None:
            self.ws.close()

    @task
    def scroll(self) -> None:
        if self.ws is None:
            return
        self.index += 1
        m = PLAN.meetings[self.meeting]
        state = {
            "item_id": m["item"],
            "study_uid": m["study"],
            "image_index": self.index,
        }
        started = PLAN.sent_at[(self.meeting, self.index)] = time.perf_counter()
        try:
            self.ws.send(json.dumps({"type": "view", "state": state}))
            PLAN.sent += 1
            while True:  # read the room's echoes, or the server drops us as too slow
                self.ws.recv(timeout=0)
        except TimeoutError:
            pass
        except Exception as exc:
            _fire(self, "MDT view send", started, exc)
            self.ws = None


class Follower(User):
    fixed_count = 0  # set to meetings x followers
    wait_time = constant(0)
    _next: ClassVar[itertools.count[int]] = itertools.count()

    def on_start(self) -> None:
        n = next(Follower._next)
        per = len(PLAN.followers[0]) if PLAN.followers else 1
        self.meeting, me = (n // per) % len(PLAN.meetings), n % per
        self.ws = _join(self, PLAN.url(self.meeting, PLAN.followers[self.meeting][me]))

    def on_stop(self) -> None:
        if self.ws is not None:
            self.ws.close()

    @task
    def follow(self) -> None:
        if self.ws is None:
            time.sleep(1)
            return
        try:
            text = self.ws.recv(timeout=2)
        except TimeoutError:
            return
        except Exception as exc:
            _fire(self, "MDT presenter->follower", time.perf_counter(), exc)
            self.ws = None
            return
        message = json.loads(text)
        if message.get("type") == "view":
            sent = PLAN.sent_at.get((self.meeting, message["state"].get("image_index", -1)))
            if isinstance(sent, float):
                PLAN.received += 1
                self.environment.events.request.fire(
                    request_type="WS",
                    name="MDT presenter->follower",
                    response_time=(time.perf_counter() - sent) * 1000,
                    response_length=0,
                    exception=None,
                    context={},
                )
        elif message.get("type") == "error":
            _fire(self, "MDT presenter->follower", time.perf_counter(), OSError(str(message)))


def configure(meetings: int, followers: int, rate: float) -> None:
    """Size the MDT users of the next run (0 meetings: none)."""
    Presenter.fixed_count = meetings
    Follower.fixed_count = meetings * followers
    Presenter.wait_time = constant(1 / rate)
    Presenter._next = itertools.count()
    Follower._next = itertools.count()
    PLAN.sent = PLAN.received = 0
