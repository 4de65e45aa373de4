"""MDT meetings (issue 12): create/get/prefetch/outcome with the access rule per item, and the
live rooms over WebSockets (presenter followed, rooms separate, late joiner, handover)."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession

from solent.app import Archive
from solent.domain.principal import SYSTEM
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template

__all__ = ["demo", "demo_client", "demo_template"]


def _studies(demo: Archive, issuer: str, local_id: str) -> list[str]:
    return [
        r["study_uid"] for r in demo.query.list_studies(SYSTEM, issuer=issuer, local_id=local_id)
    ]


def _meeting(demo: Archive, client: TestClient, h: dict[str, str], title: str) -> dict[str, Any]:
    body = {
        "title": title,
        "date": "2026-12-07",
        "team": "Lung MDT",
        "items": [
            {
                "issuer": "ZZA",
                "patient_id": "A100001",
                "study_uids": _studies(demo, "ZZA", "A100001") + _studies(demo, "ZZB", "B7730021"),
            },
            {
                "issuer": "ZZA",
                "patient_id": "A100002",
                "study_uids": _studies(demo, "ZZA", "A100002"),
            },
        ],
    }
    r = client.post("/api/mdt/meetings", headers=h, json=body)
    assert r.status_code == 201, r.text
    meeting: dict[str, Any] = r.json()
    return meeting


def test_create_get_prefetch_and_outcome(demo: Archive, demo_client: TestClient) -> None:
    coord = add_user(demo, "coord", "ZZA", "mdt_coordinator")
    drzb = add_user(demo, "drzb", "ZZB", "clinician")  # sees Alice (linked at ZZB), not Erin
    nurse = add_user(demo, "admin1", "ZZA", "pacs_admin")
    m = _meeting(demo, demo_client, coord, "Lung MDT 7 Dec")
    assert m["coordinator"] == "coord" and m["presenter"] is None
    # Creating the meeting starts its prefetch as the coordinator (test_mdt_prefetch.py).
    assert m["prefetch"]["state"] in ("running", "done") and m["time"] is None
    demo.services.mdt.wait_prefetch(m["id"], 120)
    alice, erin = m["items"]
    assert (alice["position"], alice["patient_name"], alice["issuer"]) == (1, "DEMO^ALICE", "ZZA")
    assert len(alice["study_uids"]) == 3 and erin["patient_id"] == "A100002"

    # Only a coordinator creates; patients outside the coordinator's reach look unknown.
    drza = add_user(demo, "drza", "ZZA", "clinician")
    body = {
        "title": "x",
        "date": "2026-12-07",
        "team": "t",
        "items": [{"issuer": "ZZA", "patient_id": "A100001", "study_uids": []}],
    }
    assert demo_client.post("/api/mdt/meetings", headers=drza, json=body).status_code == 403
    for pid in ("B7730444", "NOBODY"):  # Bob (ZZB only) and nobody answer alike
        body["items"] = [{"issuer": "ZZB", "patient_id": pid, "study_uids": []}]
        r = demo_client.post("/api/mdt/meetings", headers=coord, json=body)
        assert (r.status_code, r.json()) == (404, {"detail": "no such patient"})
    body["items"] = [
        {"issuer": "ZZA", "patient_id": "A100001", "study_uids": _studies(demo, "ZZB", "B7730444")}
    ]  # Bob's study for Alice
    assert demo_client.post("/api/mdt/meetings", headers=coord, json=body).status_code == 400
    # A date that is no day (kept before: a meeting no schedule or prefetch could place).
    body["items"] = [{"issuer": "ZZA", "patient_id": "A100001", "study_uids": []}]
    for day in ("2026-13-45", "0000-00-00", "2026-02-30"):
        r = demo_client.post("/api/mdt/meetings", headers=coord, json={**body, "date": day})
        assert r.status_code == 400 and "must be a day" in r.json()["detail"], day

    # A participant who may not see Erin gets her item without any patient data.
    seen = demo_client.get(f"/api/mdt/meetings/{m['id']}", headers=drzb).json()
    assert seen["items"][0]["patient_name"] == "DEMO^ALICE"
    assert seen["items"][1] == {
        "id": erin["id"],
        "position": 2,
        "issuer": None,
        "patient_id": None,
        "patient_name": None,
        "nhs_number": None,
        "study_uids": [],
        "outcome": None,
        "prefetch": None,
    }
    assert demo_client.get(f"/api/mdt/meetings/{m['id']}", headers=nurse).status_code == 403
    assert demo_client.get("/api/mdt/meetings/999", headers=drzb).status_code == 404
    listed = demo_client.get("/api/mdt/meetings", params={"date": "2026-12-07"}, headers=coord)
    assert [x["id"] for x in listed.json()["meetings"]] == [m["id"]]
    other_day = demo_client.get("/api/mdt/meetings", params={"date": "2026-12-08"}, headers=coord)
    assert other_day.json() == {"meetings": []}

    # Prefetch again by hand: warms what the viewer fetches first, progress in the meeting JSON.
    cache = demo.services.retrieve.responses
    r = demo_client.post(f"/api/mdt/meetings/{m['id']}/prefetch", headers=coord)
    assert r.status_code == 202 and r.json()["started"] is True
    demo.services.mdt.wait_prefetch(m["id"], 120)
    state = demo_client.get(f"/api/mdt/meetings/{m['id']}", headers=coord).json()["prefetch"]
    # 4 studies of one series each: the study's thumbnail, then its series.
    assert state == {"state": "done", "done": 8, "total": 8}
    # The counts are the coordinator's: drzb, who may not see Erin, would learn from them how
    # many studies and series she has (8 - Alice's 6). drzb's are those of Alice's item only.
    seen = demo_client.get(f"/api/mdt/meetings/{m['id']}", headers=drzb).json()["prefetch"]
    assert seen == {"state": "done", "done": 6, "total": 6}
    warmed = len(cache)
    assert warmed > 0
    for study in alice["study_uids"] + erin["study_uids"]:
        series = demo_client.get(f"/api/viewer/studies/{study}", headers=coord).json()["series"]
        for s in series:
            base = f"/dicomweb/studies/{study}/series/{s['series_uid']}"
            assert demo_client.get(base + "/metadata", headers=coord).status_code == 200
            thumb = demo_client.get(base + "/thumbnail", headers={**coord, "Accept": "image/*"})
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        r = demo_client.get(f"/dicomweb/studies/{study}/thumbnail", headers=coord)
        assert r.status_code == 200
    assert len(cache) == warmed  # every one answered from what the prefetch put there

    # Outcomes: per patient, audited with the meeting id; not for an item you may not see.
    r = demo_client.put(
        f"/api/mdt/meetings/{m['id']}/items/{alice['id']}/outcome",
        headers=drzb,
        json={"text": "Refer to thoracic surgery; repeat CT in 3 months."},
    )
    assert r.status_code == 200, r.text
    assert r.json()["outcome"].startswith("Refer") and r.json()["id"] == alice["id"]
    hidden = demo_client.put(
        f"/api/mdt/meetings/{m['id']}/items/{erin['id']}/outcome", headers=drzb, json={"text": "x"}
    )
    missing = demo_client.put(
        f"/api/mdt/meetings/{m['id']}/items/99999/outcome", headers=drzb, json={"text": "x"}
    )
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["detail"].replace(str(erin["id"]), "N") == missing.json()[
        "detail"
    ].replace("99999", "N")
    trail = demo.audit.search(patient_issuer="ZZA", patient_id="A100001")
    tagged = [(x["action"], x["actor_name"]) for x in trail if x["purpose"] == f"mdt:{m['id']}"]
    assert ("patient-record", "coord") in tagged  # listed for the meeting
    assert ("retrieve", "coord") in tagged  # prefetched
    assert ("view", "drzb") in tagged  # opened the meeting
    assert ("patient-record", "drzb") in tagged  # the outcome
    erin_trail = demo.audit.search(patient_issuer="ZZA", patient_id="A100002", actor_name="drzb")
    assert [x for x in erin_trail if x["outcome"] == "success"] == []


# -- live rooms -----------------------------------------------------------------------------------


def _token(headers: dict[str, str]) -> str:
    return headers["Authorization"].split(" ", 1)[1]


def _until(ws: WebSocketTestSession, kind: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read until a message of ``kind``; returns it and what came before."""
    skipped = []
    for _ in range(50):
        msg: dict[str, Any] = ws.receive_json()
        if msg["type"] == kind:
            return msg, skipped
        skipped.append(msg)
    raise AssertionError(f"no {kind} message in 50")


def test_live_rooms_follow_their_own_presenter(demo: Archive, demo_client: TestClient) -> None:
    coord = add_user(demo, "coord", "ZZA", "mdt_coordinator")
    users = {n: add_user(demo, n, "ZZA", "clinician") for n in ("p1", "f1", "p2", "f2", "late")}
    m1 = _meeting(demo, demo_client, coord, "Lung")
    m2 = _meeting(demo, demo_client, coord, "Neuro")
    item1 = m1["items"][0]

    def join(meeting: dict[str, Any], name: str) -> Any:
        url = f"/api/mdt/meetings/{meeting['id']}/live?token={_token(users[name])}"
        return demo_client.websocket_connect(url)

    with join(m1, "p1") as p1, join(m1, "f1") as f1, join(m2, "p2") as p2, join(m2, "f2") as f2:
        welcomes = {
            n: ws.receive_json() for n, ws in (("p1", p1), ("f1", f1), ("p2", p2), ("f2", f2))
        }
        for name, w in welcomes.items():  # all four are in their rooms once welcomed
            assert (w["type"], w["you"], w["presenter"], w["state"], w["seq"]) == (
                "welcome",
                name,
                None,
                None,
                0,
            )
            assert name in w["participants"]
        assert _until(f1, "participants")[0]["participants"] in (["f1", "p1"], ["f1"])
        p1.send_json({"type": "claim"})
        assert _until(f1, "presenter")[0] == {"type": "presenter", "presenter": "p1"}
        p2.send_json({"type": "claim"})
        assert _until(f2, "presenter")[0]["presenter"] == "p2"

        view = {
            "item_id": item1["id"],
            "study_uid": item1["study_uids"][0],
            "series_uid": "1.2.3",
            "image_index": 7,
            "voi": {"center": -600, "width": 1500},
            "camera": {
                "zoom": 1.5,
                "pan": [0.1, 0],
                "rotation": 0,
                "flip_h": False,
                "flip_v": False,
                "invert": False,
            },
            "measurements": [],
        }
        p1.send_json({"type": "view", "state": view})
        got, _ = _until(f1, "view")
        assert got == {"type": "view", "state": view, "seq": 2, "by": "p1"}  # the claim was 1
        # Meeting 2's follower sees its own presenter's pointer and never meeting 1's view.
        p2.send_json({"type": "pointer", "point": [-12.5, 30, 4]})
        pointer, before = _until(f2, "pointer")
        assert pointer == {"type": "pointer", "point": [-12.5, 30.0, 4.0]}
        assert all(x["type"] != "view" for x in before)

        # Followers cannot drive; nonsense is refused without effect.
        f1.send_json({"type": "view", "state": view})
        assert _until(f1, "error")[0]["detail"] == "only the presenter can change the view"
        p1.send_json({"type": "view", "state": {**view, "study_uid": "9.9.9"}})
        assert "study_uid" in _until(p1, "error")[0]["detail"]
        f1.send_json({"type": "claim"})
        assert "p1 is presenting" in _until(f1, "error")[0]["detail"]

        # A late joiner gets the current state at once.
        with join(m1, "late") as late:
            w = late.receive_json()
            assert (w["type"], w["presenter"], w["state"], w["seq"]) == ("welcome", "p1", view, 2)
            assert w["participants"] == ["f1", "late", "p1"]
            # Handover: p1 gives the room to "late"; p1 can no longer drive; late can.
            p1.send_json({"type": "handover", "to": "late"})
            assert _until(f1, "presenter")[0]["presenter"] == "late"
            p1.send_json({"type": "view", "state": view})
            assert _until(p1, "error")[0]["type"] == "error"
            late.send_json({"type": "view", "state": {**view, "image_index": 8}})
            got, _ = _until(f1, "view")
            assert (got["by"], got["seq"], got["state"]["image_index"]) == ("late", 4, 8)
        assert _until(f1, "presenter")[0]["presenter"] is None  # the presenter left
    # The meeting JSON follows (written once the presenter's socket has closed).
    for _ in range(100):
        meeting = demo_client.get(f"/api/mdt/meetings/{m1['id']}", headers=coord).json()
        if meeting["presenter"] is None:
            break
        time.sleep(0.05)
    assert meeting["presenter"] is None


def _length(uid: str, sop_uid: str, x: float) -> dict[str, Any]:
    return {
        "uid": uid,
        "tool": "Length",
        "sop_uid": sop_uid,
        "frame": 1,
        "points": [[x, -40.5, 12.0], [x + 60.25, -40.5, 12.0]],
        "text_box": None,
    }


def test_live_room_keeps_bounded_measurements_for_late_joiners(
    demo: Archive, demo_client: TestClient
) -> None:
    """The presenter's measurements reach followers and a late joiner, cut to their known keys;
    too many, an unknown tool, a wrong number of points or a coordinate off any scanner's field
    are refused with a readable reason and change nothing."""
    coord = add_user(demo, "coord", "ZZA", "mdt_coordinator")
    users = {n: add_user(demo, n, "ZZA", "clinician") for n in ("pres", "fol", "late")}
    m = _meeting(demo, demo_client, coord, "Lung")
    item = m["items"][0]
    study = item["study_uids"][0]
    url = f"/api/mdt/meetings/{m['id']}/live?token="

    angle = {
        "uid": "angle-1",
        "tool": "Angle",
        "sop_uid": study + ".7",
        "frame": 1,
        "points": [[0, 0, 12], [10, 0, 12], [10, 10, 12]],
        "text_box": [20, 20, 12],
        "label": "x" * 5000,  # not a key followers draw: not kept, not relayed
    }
    marks = [_length("length-1", study + ".7", -30.0), angle]
    view = {"item_id": item["id"], "study_uid": study, "image_index": 6, "measurements": marks}
    kept = [marks[0], {k: v for k, v in angle.items() if k != "label"}]
    with (
        demo_client.websocket_connect(url + _token(users["pres"])) as pres,
        demo_client.websocket_connect(url + _token(users["fol"])) as fol,
    ):
        pres.receive_json()
        fol.receive_json()
        pres.send_json({"type": "claim"})
        _until(fol, "presenter")
        pres.send_json({"type": "view", "state": view})
        got, _ = _until(fol, "view")
        assert got["state"]["measurements"] == kept

        refused = {
            "at most 50": [_length(f"l{i}", study + ".7", i) for i in range(51)],
            "tool must be one of Length, Angle, EllipticalROI": [{**marks[0], "tool": "Arrow"}],
            "a Length measurement has 2 points": [{**marks[0], "points": marks[0]["points"] * 2}],
            "an EllipticalROI": [{**marks[0], "tool": "EllipticalROI"}],
            "in mm": [{**marks[0], "points": [[1e9, 0, 0], [0, 0, 0]]}],
            "sop_uid must be strings": [{**marks[0], "sop_uid": "1." * 40}],
            "frame must be a whole number": [{**marks[0], "frame": 0}],
        }
        for reason, bad in refused.items():
            pres.send_json({"type": "view", "state": {**view, "measurements": bad}})
            detail = _until(pres, "error")[0]["detail"]
            assert reason.removeprefix("an ") in detail, (reason, detail)
        # The presenter removes the angle; the next view carries only the length.
        pres.send_json({"type": "view", "state": {**view, "measurements": marks[:1]}})
        got, skipped = _until(fol, "view")
        assert got["state"]["measurements"] == marks[:1]
        assert all(x["type"] != "view" for x in skipped)  # nothing refused reached the room

        with demo_client.websocket_connect(url + _token(users["late"])) as late:
            welcome = late.receive_json()
            assert welcome["state"]["measurements"] == marks[:1]
    # Kept with the meeting too: a node opening the room later starts with them.
    snapshot = demo.services.mdt.stored_live(f"mdt:{m['id']}")
    assert snapshot[0]["view"]["state"]["measurements"] == marks[:1]


def test_live_room_hides_items_a_participant_may_not_see(
    demo: Archive, demo_client: TestClient
) -> None:
    coord = add_user(demo, "coord", "ZZA", "mdt_coordinator")
    drzb = add_user(demo, "drzb", "ZZB", "clinician")
    m = _meeting(demo, demo_client, coord, "Lung")
    alice, erin = m["items"]
    url = f"/api/mdt/meetings/{m['id']}/live?token="
    with (
        demo_client.websocket_connect(url + _token(coord)) as c,
        demo_client.websocket_connect(url + _token(drzb)) as z,
    ):
        c.receive_json()
        z.receive_json()
        c.send_json({"type": "claim"})
        _until(z, "presenter")
        erin_view = {"item_id": erin["id"], "study_uid": erin["study_uids"][0], "image_index": 3}
        c.send_json({"type": "view", "state": erin_view})
        got, _ = _until(z, "view")
        assert got["state"] == {"item_id": erin["id"], "restricted": True}
        # Where the presenter points in Erin's images (patient coordinates) stays hidden too.
        c.send_json({"type": "pointer", "point": [-12.5, 30, 4]})
        assert _until(c, "pointer")[0]["point"] == [-12.5, 30.0, 4.0]
        assert _until(z, "pointer")[0] == {"type": "pointer", "point": None}
        alice_view = {"item_id": alice["id"], "study_uid": alice["study_uids"][0]}
        c.send_json({"type": "view", "state": alice_view})
        assert _until(z, "view")[0]["state"] == alice_view
        c.send_json({"type": "pointer", "point": [1, 2, 3]})
        assert _until(z, "pointer")[0] == {"type": "pointer", "point": [1.0, 2.0, 3.0]}
    shown = [
        (x["patient_id"], x["purpose"])
        for x in demo.audit.search(actor_name="coord", action="view")
        if x["detail"] and "presented" in x["detail"]
    ]
    assert shown == [("A100002", f"mdt:{m['id']}"), ("A100001", f"mdt:{m['id']}")]


def test_live_room_refuses_bad_tokens_and_unknown_meetings(
    demo: Archive, demo_client: TestClient
) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    for url, code in (
        ("/api/mdt/meetings/1/live?token=nonsense", 4401),
        (f"/api/mdt/meetings/424242/live?token={_token(h)}", 4404),
        (f"/api/mdt/meetings/{2**64}/live?token={_token(h)}", 4404),  # no key is that large
    ):
        with demo_client.websocket_connect(url) as ws:
            assert ws.receive_json()["type"] == "error"
            closed = ws.receive()
            assert closed["type"] == "websocket.close" and closed["code"] == code
    failed = demo.audit.search(action="login-failed")
    assert [json.loads(x["detail"])["path"] for x in failed] == ["/api/mdt/meetings/1/live"]


def test_the_room_is_kept_in_its_order(demo: Archive, demo_client: TestClient) -> None:
    """One path writes the presenter and latest view (the broker's keeping round): events get
    the meeting's next numbers, only a view of whoever presents at its place counts, and a
    vacancy for someone who no longer presents changes nothing; a node opening the room later
    reads that as one snapshot."""
    coord = add_user(demo, "coord", "ZZA", "mdt_coordinator")
    m = _meeting(demo, demo_client, coord, "Lung")
    mdt, room = demo.services.mdt, f"mdt:{m['id']}"
    view = {"item_id": m["items"][0]["id"], "image_index": 3}
    first = [
        {"type": "presenter", "presenter": "a"},
        {"type": "view", "state": view, "by": "a"},
        {"type": "presenter", "presenter": "b"},
        {"type": "view", "state": {**view, "image_index": 9}, "by": "a"},  # a no longer presents
        {"type": "pointer", "x": 0.5, "y": 0.5},
    ]
    told: list[tuple[str, list[dict[str, Any]]]] = []
    mdt.keep_live({room: first}, lambda conn, r, events: told.append((r, list(events))))
    assert [e.get("seq") for e in first] == [1, 2, 3, 4, None]
    assert told == [(room, first)]  # announced in the same round, numbered
    mdt.keep_live({room: [{"type": "presenter", "presenter": None, "was": "a"}]}, None)
    snapshot = mdt.stored_live(room)
    assert snapshot == [
        {"type": "snapshot", "presenter": "b", "seq": 5, "view": {**first[1], "seq": 2}}
    ]
    mdt.keep_live({room: [{"type": "presenter", "presenter": None, "was": "b"}]}, None)
    assert mdt.stored_live(room)[0]["presenter"] is None
    got = demo_client.get(f"/api/mdt/meetings/{m['id']}", headers=coord).json()
    assert got["presenter"] is None


def test_live_room_answers_nonsense_frames_and_keeps_the_connection(
    demo: Archive, demo_client: TestClient
) -> None:
    """A binary frame, JSON nested too deep for the parser and a message over the limit each
    get an error for the sender, whose connection stays in the room; the others hear nothing."""
    coord = add_user(demo, "coord", "ZZA", "mdt_coordinator")
    other = add_user(demo, "drza", "ZZA", "clinician")
    m = _meeting(demo, demo_client, coord, "Lung")
    url = f"/api/mdt/meetings/{m['id']}/live?token="
    with (
        demo_client.websocket_connect(url + _token(coord)) as c,
        demo_client.websocket_connect(url + _token(other)) as o,
    ):
        c.receive_json()
        o.receive_json()
        c.send_bytes(b'{"type": "claim"}')
        assert "text frames" in _until(c, "error")[0]["detail"]
        c.send_text("[" * 30_000 + "]" * 30_000)  # within 64 KiB
        assert _until(c, "error")[0]["detail"] == "send JSON messages"
        c.send_text(json.dumps({"type": "pointer", "point": [0, 0, 0], "pad": "x" * 70_000}))
        assert "limited" in _until(c, "error")[0]["detail"]
        c.send_json({"type": "claim"})  # still in the room
        assert _until(c, "presenter")[0]["presenter"] == "coord"
        got, before = _until(o, "presenter")
        assert got["presenter"] == "coord" and all(x["type"] != "error" for x in before)


def test_a_study_of_the_item_a_participant_may_no_longer_see_is_hidden_from_them(
    demo: Archive, demo_client: TestClient
) -> None:
    """Alice's ZZA and ZZB records are linked when the meeting is made, so her ZZB MR is listed
    under her ZZA record; then the regional identity source unlinks them. A ZZA clinician still
    sees Alice (ZZA) but no longer the ZZB study: the meeting lists only the studies they may
    see, and while the presenter (who may see both trusts) shows the ZZB study, they are told
    it is restricted, without its UIDs or image position, as for a patient they may not see."""
    from solent.domain.principal import REGIONAL_IDENTITY_SOURCE, Principal, PrincipalKind
    from solent.services.identity import Change, PatientKey

    coord = add_user(demo, "coord", "ZZA", "mdt_coordinator", other=("ZZB",))
    drza = add_user(demo, "drza", "ZZA", "clinician")
    m = _meeting(demo, demo_client, coord, "Lung")
    alice = m["items"][0]
    (ct,) = _studies(demo, "ZZA", "A100001")[:1]
    (mr,) = _studies(demo, "ZZB", "B7730021")
    assert {ct, mr} <= set(alice["study_uids"])
    empi = Principal(PrincipalKind.NODE, "hl7:EMPI", "ZZE", frozenset({REGIONAL_IDENTITY_SOURCE}))
    demo.identity.unlink(PatientKey("ZZA", "A100001"), PatientKey("ZZB", "B7730021"), Change(empi))
    assert demo_client.get(f"/api/viewer/studies/{mr}", headers=drza).status_code == 404

    mine = demo_client.get(f"/api/mdt/meetings/{m['id']}", headers=drza).json()["items"][0]
    assert mine["patient_id"] == "A100001" and mr not in mine["study_uids"]
    assert ct in mine["study_uids"]
    url = f"/api/mdt/meetings/{m['id']}/live?token="
    with (
        demo_client.websocket_connect(url + _token(coord)) as c,
        demo_client.websocket_connect(url + _token(drza)) as z,
    ):
        c.receive_json()
        z.receive_json()
        c.send_json({"type": "claim"})
        _until(z, "presenter")
        shown = {"item_id": alice["id"], "study_uid": mr, "series_uid": mr + ".1", "image_index": 4}
        c.send_json({"type": "view", "state": shown})
        assert _until(c, "view")[0]["state"] == shown
        got, _ = _until(z, "view")
        assert got["state"] == {"item_id": alice["id"], "restricted": True}
        c.send_json({"type": "pointer", "point": [1, 2, 3]})
        assert _until(z, "pointer")[0]["point"] is None
        c.send_json({"type": "view", "state": {**shown, "study_uid": ct, "series_uid": ct}})
        assert _until(z, "view")[0]["state"]["study_uid"] == ct
    with demo_client.websocket_connect(url + _token(coord)) as c:  # a late joiner alike
        c.receive_json()
        c.send_json({"type": "claim"})
        c.send_json({"type": "view", "state": shown})
        _until(c, "view")
        with demo_client.websocket_connect(url + _token(drza)) as late:
            welcome = late.receive_json()
            assert welcome["state"] == {"item_id": alice["id"], "restricted": True}
            assert mr not in json.dumps(welcome)
