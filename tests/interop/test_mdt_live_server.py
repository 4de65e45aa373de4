"""MDT live rooms through a real `solent serve` (uvicorn + the `websockets` protocol) with real
WebSocket clients: each meeting's follower follows its own presenter only; a late joiner gets
the current view; the presenter role is handed over; the meeting JSON shows the presenter."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import RunningServer, start_server

pytestmark = pytest.mark.interop


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[RunningServer]:
    env = {"SOLENT_DEMO_DATA": "true"}
    srv = start_server(tmp_path / "srv", extra_env=env, timeout=180)
    srv.env.update(env)
    yield srv
    srv.stop()


def _token(srv: RunningServer, name: str, trust: str, *roles: str) -> str:
    args = ["user", "add", name, "--trust", trust, "--no-password"]
    for role in roles:
        args += ["--role", role]
    srv.cli(*args)
    return srv.cli("token", "create", "--user", name).stdout.strip().splitlines()[-1]


async def _until(ws: ClientConnection, kind: str, timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            msg: dict[str, Any] = json.loads(await ws.recv())
            if msg["type"] == kind:
                return msg


async def _drain(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """Everything that arrives within ``seconds``."""
    got = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                got.append(json.loads(await ws.recv()))
    except TimeoutError:
        return got


def test_two_meetings_follow_their_own_presenter(demo_server: RunningServer) -> None:
    srv = demo_server
    tokens = {"coord": _token(srv, "coord", "ZZA", "mdt_coordinator")}
    for name in ("p1", "f1", "p2", "f2", "late"):
        tokens[name] = _token(srv, name, "ZZA", "clinician")
    coord = {"Authorization": f"Bearer {tokens['coord']}"}
    with httpx.Client(base_url=srv.base_url, headers=coord, timeout=30) as http:
        found = http.get("/api/viewer/search", params={"name": "alice"}).json()
        assert [p["key"] for p in found["patients"]] == ["ZZA|A100001"]
        timeline = http.get("/api/viewer/patients/ZZA/A100001/timeline").json()
        uids = [s["study_uid"] for s in timeline["studies"]]
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
    ws_base = srv.base_url.replace("http://", "ws://")

    def url(meeting: dict[str, Any], name: str) -> str:
        return f"{ws_base}/api/mdt/meetings/{meeting['id']}/live?token={tokens[name]}"

    m1, m2 = meetings
    item = m1["items"][0]["id"]
    view = {"item_id": item, "study_uid": uids[0], "series_uid": "1.2", "image_index": 5}

    async def scenario() -> None:
        async with (
            connect(url(m1, "p1")) as p1,
            connect(url(m1, "f1")) as f1,
            connect(url(m2, "p2")) as p2,
            connect(url(m2, "f2")) as f2,
        ):
            for ws in (p1, f1, p2, f2):
                assert (await _until(ws, "welcome"))["presenter"] is None
            await p1.send(json.dumps({"type": "claim"}))
            assert (await _until(f1, "presenter"))["presenter"] == "p1"
            await p2.send(json.dumps({"type": "claim"}))
            assert (await _until(f2, "presenter"))["presenter"] == "p2"

            await p1.send(json.dumps({"type": "view", "state": view}))
            got = await _until(f1, "view")
            assert (got["state"], got["by"], got["seq"]) == (view, "p1", 2)  # the claim was 1
            others = await _drain(f2, 1.0)  # meeting 2's follower hears nothing of meeting 1
            assert [m for m in others if m["type"] in ("view", "pointer")] == []

            second = {**view, "item_id": m2["items"][0]["id"], "image_index": 9}
            await p2.send(json.dumps({"type": "view", "state": second}))
            assert (await _until(f2, "view"))["state"] == second
            assert [m for m in await _drain(f1, 0.5) if m["type"] == "view"] == []

            async with connect(url(m1, "late")) as late:
                welcome = await _until(late, "welcome")
                assert (welcome["presenter"], welcome["state"], welcome["seq"]) == ("p1", view, 2)
                await p1.send(json.dumps({"type": "handover", "to": "late"}))
                assert (await _until(f1, "presenter"))["presenter"] == "late"
                await late.send(json.dumps({"type": "pointer", "point": [0.5, -8, 12]}))
                got = await _until(f1, "pointer")
                assert got == {"type": "pointer", "point": [0.5, -8.0, 12.0]}
                await p1.send(json.dumps({"type": "view", "state": view}))
                assert "presenter" in (await _until(p1, "error"))["detail"]

    asyncio.run(scenario())
    with httpx.Client(base_url=srv.base_url, headers=coord, timeout=30) as http:
        assert http.get(f"/api/mdt/meetings/{m1['id']}").json()["presenter"] in (None, "late")
        audit = {"Authorization": f"Bearer {_token(srv, 'privacy', 'ZZA', 'auditor')}"}
        rows = http.get(
            "/api/audit",
            params={"issuer": "ZZA", "patient_id": "A100001", "user": "p1"},
            headers=audit,
        ).json()
        assert any(r["purpose"] == f"mdt:{m1['id']}" for r in rows)
