"""MDT live rooms across nodes (issue 16): two `solent serve` processes on one PostgreSQL, real
WebSocket clients. A presenter on node 1 is followed by a follower on node 2; a late joiner on
either node starts at the current view; the presenter role is handed over across nodes; two
meetings do not hear each other; the participants are everyone on both nodes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.conftest import RunningServer, start_server
from tests.interop.test_mdt_live_server import _drain, _token, _until

pytestmark = pytest.mark.interop


@pytest.fixture
def two_nodes(fresh_postgres_url: str, tmp_path: Path) -> Iterator[list[RunningServer]]:
    shared = {
        "SOLENT_DATABASE_URL": fresh_postgres_url,
        "SOLENT_TOKEN_SECRET": "mdt-nodes-test-secret-0123456789abcdef",
        "SOLENT_AUDIT_KEY": "mdt-nodes-test audit key shared by the nodes",
        "SOLENT_DICOM_WORKERS": "1",
    }
    first = start_server(tmp_path / "n1", {**shared, "SOLENT_DEMO_DATA": "true"}, 240)
    nodes = [first]
    try:
        nodes.append(start_server(tmp_path / "n2", extra_env=shared, timeout=120))
        yield nodes
    finally:
        for node in nodes:
            node.stop()


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
            marks = [{"tool": "Length", "points": [[i, i], [i + 40, i + 9]]} for i in range(150)]
            big = {**view, "image_index": 8, "measurements": marks}
            await pres.send(json.dumps({"type": "view", "state": big}))
            assert (await _until(fol, "view"))["state"] == big
            await pres.send(json.dumps({"type": "pointer", "x": 0.5, "y": 0.25}))
            assert await _until(fol, "pointer") == {"type": "pointer", "x": 0.5, "y": 0.25}
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
            assert (got["state"]["image_index"], got["by"], got["seq"]) == (1, "fol", 7)
            await pres.send(json.dumps({"type": "view", "state": view}))
            assert "presenter" in (await _until(pres, "error"))["detail"]

        # Everybody left; the meeting's room opens again on node 1 at the last view.
        async with connect(url(n1, m1, "late1")) as again:
            welcome = await _until(again, "welcome")
            assert welcome["state"]["image_index"] == 1 and welcome["seq"] == 7
        # A participant who may not see the patient gets the item only, on any node.
        async with connect(url(n2, m1, "zzc")) as zzc:
            welcome = await _until(zzc, "welcome")
            assert welcome["state"] == {"item_id": view["item_id"], "restricted": True}

    asyncio.run(scenario())
