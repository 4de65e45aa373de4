"""MDT live rooms across nodes (issue 16): two `solent serve` processes on one PostgreSQL, real
WebSocket clients. A presenter on node 1 is followed by a follower on node 2; a late joiner on
either node starts at the current view; the presenter role is handed over across nodes; two
meetings do not hear each other; the participants are everyone on both nodes. A burst of claims
and views from both nodes ends the same for the clients of both (one order, set by the
database). A node SIGKILLed drops out of the room within the lease and its presenter can be
replaced."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.conftest import RunningServer, start_server
from tests.interop.test_mdt_live_server import _drain, _token, _until

pytestmark = pytest.mark.interop
HEARTBEAT = 0.5  # seconds: the lease is three of them


@pytest.fixture
def two_nodes(fresh_postgres_url: str, tmp_path: Path) -> Iterator[list[RunningServer]]:
    shared = {
        "SOLENT_DATABASE_URL": fresh_postgres_url,
        "SOLENT_TOKEN_SECRET": "mdt-nodes-test-secret-0123456789abcdef",
        "SOLENT_AUDIT_KEY": "mdt-nodes-test audit key shared by the nodes",
        "SOLENT_DICOM_WORKERS": "1",
        "SOLENT_MDT_HEARTBEAT_SECONDS": str(HEARTBEAT),
    }
    first = start_server(tmp_path / "n1", {**shared, "SOLENT_DEMO_DATA": "true"}, 240)
    nodes = [first]
    try:
        nodes.append(start_server(tmp_path / "n2", extra_env=shared, timeout=120))
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _meeting(node: RunningServer, token: str, title: str) -> dict[str, Any]:
    with httpx.Client(base_url=node.base_url, timeout=30) as http:
        http.headers["Authorization"] = f"Bearer {token}"
        timeline = http.get("/api/viewer/patients/ZZA/A100001/timeline").json()
        uids = [s["study_uid"] for s in timeline["studies"]]
        body = {
            "title": title,
            "date": "2026-12-07",
            "team": title,
            "items": [{"issuer": "ZZA", "patient_id": "A100001", "study_uids": uids}],
        }
        r = http.post("/api/mdt/meetings", json=body)
        assert r.status_code == 201, r.text
        meeting: dict[str, Any] = r.json()
        return meeting


def _live(node: RunningServer, meeting: dict[str, Any], token: str) -> str:
    base = node.base_url.replace("http://", "ws://")
    return f"{base}/api/mdt/meetings/{meeting['id']}/live?token={token}"


def _shown(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Who presents and what is shown, in the order a client was told."""
    out: list[tuple[str, Any]] = []
    for m in messages:
        if m["type"] == "presenter":
            out.append(("presenter", m["presenter"]))
        elif m["type"] == "view":
            out.append(("view", (m["by"], m["state"]["image_index"], m["seq"])))
    return out


def test_a_burst_from_both_nodes_is_seen_in_one_order(two_nodes: list[RunningServer]) -> None:
    """Two coordinators on two nodes claim the room and send views as fast as they can, at
    once: the followers on both nodes are told the same presenters and views in the same
    order, every view shown is by whoever presents at that point, and the meeting keeps the
    presenter and view the rooms end with (a late joiner on either node starts there)."""
    n1, n2 = two_nodes
    tokens = {n: _token(n1, n, "ZZA", "mdt_coordinator") for n in ("c1", "c2")}
    tokens |= {n: _token(n1, n, "ZZA", "clinician") for n in ("w1", "w2", "late")}
    meeting = _meeting(n1, tokens["c1"], "Burst")
    item = meeting["items"][0]["id"]
    everyone = ["c1", "c2", "w1", "w2"]

    async def scenario() -> None:
        async with (
            connect(_live(n1, meeting, tokens["c1"])) as c1,
            connect(_live(n2, meeting, tokens["c2"])) as c2,
            connect(_live(n1, meeting, tokens["w1"])) as w1,
            connect(_live(n2, meeting, tokens["w2"])) as w2,
        ):
            for ws in (w1, w2):
                while (await _until(ws, "participants"))["participants"] != everyone:
                    pass

            async def burst(ws: Any, base: int) -> None:
                for i in range(10):
                    await ws.send(json.dumps({"type": "claim"}))
                    state = {"item_id": item, "image_index": base + i}
                    await ws.send(json.dumps({"type": "view", "state": state}))

            await asyncio.gather(burst(c1, 100), burst(c2, 200))
            heard = await asyncio.gather(_drain(w1, 3.0), _drain(w2, 3.0))
            one, two = (_shown(h) for h in heard)
            assert one == two
            assert sum(1 for kind, _ in one if kind == "presenter") == 20
            presenter = None
            for kind, what in one:  # a view counts only from whoever presents then
                if kind == "presenter":
                    presenter = what
                else:
                    assert what[0] == presenter
            last_view = [what for kind, what in one if kind == "view"][-1]
            for node in (n1, n2):
                async with connect(_live(node, meeting, tokens["late"])) as late:
                    welcome = await _until(late, "welcome")
                    assert welcome["presenter"] == presenter
                    assert welcome["state"]["image_index"] == last_view[1]
                    assert welcome["seq"] >= last_view[2]

    asyncio.run(scenario())


def test_a_killed_node_drops_out_and_its_presenter_is_replaced(
    two_nodes: list[RunningServer],
) -> None:
    n1, n2 = two_nodes
    tokens = {n: _token(n1, n, "ZZA", "clinician") for n in ("pres", "fol")}
    meeting = _meeting(n1, _token(n1, "coord", "ZZA", "mdt_coordinator"), "Killed")
    view = {"item_id": meeting["items"][0]["id"], "image_index": 4}

    async def scenario() -> float:
        async with (
            connect(_live(n2, meeting, tokens["pres"])) as pres,
            connect(_live(n1, meeting, tokens["fol"])) as fol,
        ):
            await _until(pres, "welcome")
            while (await _until(fol, "participants"))["participants"] != ["fol", "pres"]:
                pass
            await pres.send(json.dumps({"type": "claim"}))
            assert (await _until(fol, "presenter"))["presenter"] == "pres"
            await asyncio.sleep(4 * HEARTBEAT)  # alive past a lease: nobody drops out
            assert [m for m in await _drain(fol, 0.1) if m["type"] == "participants"] == []
            await fol.send(json.dumps({"type": "claim"}))
            assert "pres is presenting" in (await _until(fol, "error"))["detail"]

            n2.proc.send_signal(signal.SIGKILL)  # no goodbye: its sockets just die
            n2.proc.wait(timeout=10)
            killed = time.monotonic()
            assert (await _until(fol, "participants", 10))["participants"] == ["fol"]
            dropped = time.monotonic() - killed
            assert (await _until(fol, "presenter", 10))["presenter"] is None
            await fol.send(json.dumps({"type": "claim"}))
            assert (await _until(fol, "presenter"))["presenter"] == "fol"
            await fol.send(json.dumps({"type": "view", "state": view}))
            assert (await _until(fol, "view"))["state"] == view
            # The meeting keeps the new presenter (while fol is still in the room).
            async with httpx.AsyncClient(base_url=n1.base_url, timeout=30) as http:
                http.headers["Authorization"] = f"Bearer {tokens['fol']}"
                got = await http.get(f"/api/mdt/meetings/{meeting['id']}")
                assert got.json()["presenter"] == "fol"
            return dropped

    dropped = asyncio.run(scenario())
    # The lease is 3 heartbeats; a tick comes at most one heartbeat after it ends.
    assert dropped <= 4 * HEARTBEAT + 1.0, dropped


def test_a_room_spans_two_nodes(two_nodes: list[RunningServer]) -> None:
    n1, n2 = two_nodes
    tokens = {"coord": _token(n1, "coord", "ZZA", "mdt_coordinator")}
    for name in ("pres", "fol", "other", "late1", "late2"):
        tokens[name] = _token(n1, name, "ZZA", "clinician")
    tokens["zzc"] = _token(n1, "zzc", "ZZC", "clinician")  # may not see Alice (ZZA/ZZB)
    coord = {"Authorization": f"Bearer {tokens['coord']}"}
    with httpx.Client(base_url=n2.base_url, headers=coord, timeout=30) as http:
        uids = [
            s["study_uid"]
            for s in http.get("/api/viewer/patients/ZZA/A100001/timeline").json()["studies"]
        ]
        meetings = []
        for title in ("Lung", "Neuro"):
            r = http.post(
                "/api/mdt/meetings",
                json={
                    "title": title,
                    "date": "2026-12-07",
                    "team": title,
                    "items": [{"issuer": "ZZA", "patient_id": "A100001", "study_uids": uids}],
                },
            )
            assert r.status_code == 201, r.text
            meetings.append(r.json())
    m1, m2 = meetings

    def url(node: RunningServer, meeting: dict[str, Any], name: str) -> str:
        base = node.base_url.replace("http://", "ws://")
        return f"{base}/api/mdt/meetings/{meeting['id']}/live?token={tokens[name]}"

    view = {"item_id": m1["items"][0]["id"], "study_uid": uids[0], "image_index": 3}

    async def scenario() -> None:
        async with (
            connect(url(n1, m1, "pres")) as pres,
            connect(url(n2, m1, "fol")) as fol,
            connect(url(n2, m2, "other")) as other,
        ):
            for ws in (pres, fol, other):
                await _until(ws, "welcome")
            await pres.send(json.dumps({"type": "claim"}))
            assert (await _until(fol, "presenter"))["presenter"] == "pres"
            # Everyone on both nodes is a participant, each meeting its own.
            while (await _until(pres, "participants"))["participants"] != ["fol", "pres"]:
                pass

            for index in range(3, 8):  # every change reaches the other node, in order
                await pres.send(
                    json.dumps({"type": "view", "state": {**view, "image_index": index}})
                )
            seen = [(await _until(fol, "view"))["state"]["image_index"] for _ in range(5)]
            assert seen == [3, 4, 5, 6, 7]
            # A view over NOTIFY's 8000 bytes (many measurements) crosses by reference.
            marks = [
                {
                    "uid": f"length-{i}",
                    "tool": "Length",
                    "sop_uid": f"{view['study_uid']}.{i}",
                    "frame": 1,
                    "points": [[i - 120.375, i + 80.625, 5.5], [i - 80.125, i + 89.875, 5.5]],
                    "text_box": [i - 60.25, i + 95.5, 5.5],
                }
                for i in range(50)  # the most a view carries
            ]
            big = {**view, "image_index": 8, "measurements": marks}
            await pres.send(json.dumps({"type": "view", "state": big}))
            assert (await _until(fol, "view"))["state"] == big
            await pres.send(json.dumps({"type": "pointer", "point": [0.5, -8, 12]}))
            got = await _until(fol, "pointer")
            assert got == {"type": "pointer", "point": [0.5, -8.0, 12.0]}
            heard = await _drain(other, 1.0)  # meeting 2 hears nothing of meeting 1
            assert [m for m in heard if m["type"] in ("view", "pointer", "presenter")] == []

            # Late joiners on a node where the room is open and on one where it is not yet.
            async with connect(url(n1, m1, "late1")) as late1:
                welcome = await _until(late1, "welcome")
                assert (welcome["presenter"], welcome["state"]["image_index"]) == ("pres", 8)
            second = {**view, "item_id": m2["items"][0]["id"], "image_index": 9}
            await other.send(json.dumps({"type": "claim"}))
            await other.send(json.dumps({"type": "view", "state": second}))
            await _until(other, "view")
            async with connect(url(n1, m2, "late2")) as late2:  # meeting 2 not open on node 1
                welcome = await _until(late2, "welcome")
                assert (welcome["presenter"], welcome["state"]) == ("other", second)
            assert [m for m in await _drain(fol, 0.5) if m["type"] == "view"] == []

            # Handover across nodes: the follower on node 2 drives, node 1 follows.
            await pres.send(json.dumps({"type": "handover", "to": "fol"}))
            for ws in (pres, fol):
                while (await _until(ws, "presenter"))["presenter"] != "fol":
                    pass
            await fol.send(json.dumps({"type": "view", "state": {**view, "image_index": 1}}))
            got = await _until(pres, "view")
            # One numbering for the room: claim 1, views 2-7, handover 8, this view 9.
            assert (got["state"]["image_index"], got["by"], got["seq"]) == (1, "fol", 9)
            await pres.send(json.dumps({"type": "view", "state": view}))
            assert "presenter" in (await _until(pres, "error"))["detail"]

        # Everybody left; the meeting's room opens again on node 1 at the last view.
        async with connect(url(n1, m1, "late1")) as again:
            welcome = await _until(again, "welcome")
            assert welcome["state"]["image_index"] == 1
            # fol's leaving vacates the role (10) on the other node, maybe not committed yet.
            assert (welcome["presenter"], welcome["seq"]) in (("fol", 9), (None, 10))
        # A participant who may not see the patient gets the item only, on any node.
        async with connect(url(n2, m1, "zzc")) as zzc:
            welcome = await _until(zzc, "welcome")
            assert welcome["state"] == {"item_id": view["item_id"], "restricted": True}

    asyncio.run(scenario())
