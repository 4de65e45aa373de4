"""MDT meetings in a real browser when things go wrong: a participant's live connection drops
(network, proxy idle timeout, server restart) and the viewer must find the room again; a view
the follower's browser cannot show must not end its following. Debian chromium through
Playwright against the package's demo server (tests/interop/conftest.py)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from solent.demo import DEMO_ROOT
from tests.conftest import RunningServer
from tests.interop.viewer_support import (
    PASSWORD,
    add_user,
    eventually,
    image_index,
    new_page,
    pane,
    shot,
    sign_in,
    wait_image,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

ALICE_CT = DEMO_ROOT + "1.1"  # ZZA A100001, 24 slices

# Keeps the page's WebSockets reachable (window.__sockets) so a test can drop one the way a
# network failure does: the server sees the connection go, the page sees `close`.
KEEP_SOCKETS = """(() => {
  const Native = window.WebSocket;
  window.__sockets = [];
  window.WebSocket = function (...args) {
    const socket = new Native(...args);
    window.__sockets.push(socket);
    return socket;
  };
  window.WebSocket.prototype = Native.prototype;
  Object.assign(window.WebSocket, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
})();"""


def _meeting(demo: RunningServer, coordinator: dict[str, str], title: str) -> dict[str, Any]:
    r = httpx.post(
        demo.base_url + "/api/mdt/meetings",
        headers=coordinator,
        json={
            "title": title,
            "date": "2026-12-09",
            "team": "Thoracic",
            "items": [{"issuer": "ZZA", "patient_id": "A100001", "study_uids": [ALICE_CT]}],
        },
        timeout=30,
    )
    assert r.status_code == 201, r.text
    meeting: dict[str, Any] = r.json()
    return meeting


def _join(browser: Any, demo: RunningServer, errors: list[str], name: str, meeting: int) -> Any:
    page = new_page(browser, demo, errors)
    page.context.add_init_script(KEEP_SOCKETS)
    page.reload()  # the init script runs from this load on
    sign_in(page, name)
    page.goto(f"{demo.base_url}/viewer/#/mdt/{meeting}")
    page.wait_for_selector("#mdt-status")
    return page


def _drop(page: Any) -> None:
    """Close the page's open live connections, as a network drop would."""
    dropped = page.evaluate(
        "() => window.__sockets.filter((s) => s.readyState === 1).map((s) => (s.close(), 1)).length"
    )
    assert dropped == 1


def _sockets(page: Any) -> int:
    """Live connections the page has opened so far (a reconnect adds one)."""
    count: int = page.evaluate("() => window.__sockets.length")
    return count


def _open_sockets(page: Any) -> int:
    count: int = page.evaluate("() => window.__sockets.filter((s) => s.readyState === 1).length")
    return count


@pytest.mark.timeout(600)
def test_a_dropped_live_connection_comes_back_and_follows_again(
    demo: RunningServer, browser: Any
) -> None:
    """A follower whose connection drops reconnects and shows where the presenter is now; a
    presenter whose connection drops gets the role back and the room follows it again."""
    coordinator = add_user(demo, "rc_coord", "ZZA", "mdt_coordinator")
    add_user(demo, "rc_pres", "ZZA", "radiologist")
    add_user(demo, "rc_fol", "ZZB", "radiologist")
    meeting = _meeting(demo, coordinator, "Reconnect MDT")["id"]
    errors: list[str] = []
    pres = _join(browser, demo, errors, "rc_pres", meeting)
    fol = _join(browser, demo, errors, "rc_fol", meeting)
    pres.click("#mdt-claim")
    pres.wait_for_selector("#mdt-status:has-text('Presenter: rc_pres (you)')")
    pres.click(f".mdt-open[data-study='{ALICE_CT}']")
    wait_image(pres)
    wait_image(fol)
    eventually(lambda: image_index(fol) == image_index(pres), what="follower at the slice")

    # The follower's connection drops; meanwhile the presenter goes to the last slice.
    _drop(fol)
    pres.locator(f"{pane()} .viewport").hover()
    pres.keyboard.press("End")
    eventually(lambda: image_index(pres) == 23, what="presenter at the last slice")
    eventually(lambda: image_index(fol) == 23, what="the follower back in the room, following")
    fol.wait_for_selector("#mdt-status:not(:has-text('connection lost'))")
    assert _open_sockets(fol) == 1

    # The presenter's connection drops and the presenter goes on meanwhile (to the first
    # slice): the room lets the role go, the presenter's page reconnects and presents again
    # from where it is now (not from the room's last view), and the follower follows there
    # and on the presenter's next move.
    opened = _sockets(pres)
    _drop(pres)
    pres.locator(f"{pane()} .viewport").hover()
    pres.keyboard.press("Home")
    eventually(lambda: image_index(pres) == 0, what="presenter at the first slice")
    eventually(
        lambda: _sockets(pres) > opened and _open_sockets(pres) == 1, what="presenter reconnected"
    )
    back = "#mdt-status:has-text('Presenter: rc_pres (you)'):not(:has-text('lost'))"
    pres.wait_for_selector(back)
    fol.wait_for_selector("#mdt-status:has-text('Presenter: rc_pres')")
    eventually(lambda: image_index(fol) == 0, what="the follower where the presenter went")
    assert image_index(pres) == 0  # the room's last view did not take the presenter back
    pres.wait_for_selector(f"{pane()} .viewport:not(.following)")
    pres.locator(f"{pane()} .viewport").hover()
    pres.keyboard.press("End")
    eventually(lambda: image_index(pres) == 23, what="presenter at the last slice again")
    eventually(lambda: image_index(fol) == 23, what="the follower follows it again")
    assert not errors, errors


@pytest.mark.timeout(600)
def test_a_view_the_follower_cannot_show_does_not_end_its_following(
    demo: RunningServer, browser: Any
) -> None:
    """The presenter's client sends a view without a camera (the room accepts partial views):
    the follower shows what it can, and the next complete view is followed as before."""
    from websockets.sync.client import connect

    coordinator = add_user(demo, "pv_coord", "ZZA", "mdt_coordinator")
    presenter = add_user(demo, "pv_pres", "ZZA", "radiologist")
    add_user(demo, "pv_fol", "ZZA", "radiologist")
    meeting = _meeting(demo, coordinator, "Partial view MDT")
    item = meeting["items"][0]["id"]
    series = httpx.get(
        f"{demo.base_url}/dicomweb/studies/{ALICE_CT}/series", headers=presenter, timeout=30
    ).json()[0]["0020000E"]["Value"][0]
    errors: list[str] = []
    fol = _join(browser, demo, errors, "pv_fol", meeting["id"])

    token = presenter["Authorization"].split(" ", 1)[1]
    url = demo.base_url.replace("http", "ws", 1)
    with connect(f"{url}/api/mdt/meetings/{meeting['id']}/live?token={token}") as ws:

        def until(kind: str) -> dict[str, Any]:
            for _ in range(50):
                message: dict[str, Any] = json.loads(ws.recv(timeout=30))
                if message["type"] in (kind, "error"):
                    return message
            raise AssertionError(f"no {kind}")

        until("welcome")
        ws.send(json.dumps({"type": "claim"}))
        assert until("presenter")["presenter"] == "pv_pres"
        partial = {"item_id": item, "study_uid": ALICE_CT, "series_uid": series, "image_index": 3}
        ws.send(json.dumps({"type": "view", "state": partial}))
        assert until("view")["state"] == partial
        wait_image(fol)
        eventually(lambda: image_index(fol) == 3, what="the follower at the partial view's slice")

        camera = {"zoom": 1, "pan": [0, 0], "rotation": 0, "flip_h": False}
        camera |= {"flip_v": False, "invert": False}
        full = {**partial, "image_index": 17, "voi": {"center": -600, "width": 1500}}
        ws.send(json.dumps({"type": "view", "state": {**full, "camera": camera}}))
        assert until("view")["state"]["image_index"] == 17
        eventually(lambda: image_index(fol) == 17, what="the follower follows the next view")
        fol.wait_for_selector(f"{pane()} .overlay .br:has-text('W 1500 L -600')")
    assert not errors, errors


@pytest.mark.timeout(300)
def test_hostile_live_messages_are_refused_and_the_room_goes_on(demo: RunningServer) -> None:
    """Through the real server (uvicorn's WebSocket protocol): a participant who claims the
    presenter's rights, shows another meeting's item or sends an oversized message gets a
    refusal; a message too large to be worth reading (over 1 MiB) ends that connection alone
    (1009), and the presenter's next view still reaches everyone else."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    coordinator = add_user(demo, "hm_coord", "ZZA", "mdt_coordinator")
    users = {name: add_user(demo, name, "ZZA", "radiologist") for name in ("hm_p", "hm_f", "hm_x")}
    meeting = _meeting(demo, coordinator, "Hostile MDT")
    other = _meeting(demo, coordinator, "Another MDT")
    item = meeting["items"][0]["id"]
    url = demo.base_url.replace("http", "ws", 1) + f"/api/mdt/meetings/{meeting['id']}/live"

    def join(stack: contextlib.ExitStack, name: str) -> Any:
        token = users[name]["Authorization"].split(" ", 1)[1]
        ws = stack.enter_context(connect(f"{url}?token={token}", max_size=None))
        until(ws, "welcome")
        return ws

    def until(ws: Any, kind: str) -> dict[str, Any]:
        for _ in range(50):
            message: dict[str, Any] = json.loads(ws.recv(timeout=30))
            if message["type"] == kind:
                return message
        raise AssertionError(f"no {kind}")

    with contextlib.ExitStack() as stack:
        p, f, x = (join(stack, name) for name in ("hm_p", "hm_f", "hm_x"))
        p.send(json.dumps({"type": "claim"}))
        assert until(f, "presenter")["presenter"] == "hm_p"
        view = {"item_id": item, "study_uid": ALICE_CT, "image_index": 1}
        for hostile in (
            {"type": "view", "by": "hm_p", "state": view},
            {"type": "presenter", "presenter": "hm_x"},
            {"type": "claim"},
            {"type": "handover", "to": "hm_x"},
        ):
            x.send(json.dumps(hostile))
            assert until(x, "error")["detail"]
        p.send(json.dumps({"type": "view", "state": {**view, "item_id": other["items"][0]["id"]}}))
        assert "item_id" in until(p, "error")["detail"]
        x.send(json.dumps({"type": "pointer", "point": None, "pad": "x" * 100_000}))
        assert "limited" in until(x, "error")["detail"]

        x.send("x" * (2 * 1024 * 1024))
        with pytest.raises(ConnectionClosed) as closed:
            until(x, "error")
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

        p.send(json.dumps({"type": "view", "state": {**view, "image_index": 9}}))
        got: dict[str, Any] | None = None
        left = False  # the others are told the dropped connection left
        while got is None or not left:
            message = json.loads(f.recv(timeout=30))
            got = message if message["type"] == "view" else got
            left = left or message.get("participants") == ["hm_f", "hm_p"]
        assert (got["by"], got["state"]["image_index"]) == ("hm_p", 9)


@pytest.mark.timeout(300)
def test_the_meetings_of_today_are_those_of_the_users_own_day(
    demo: RunningServer, browser: Any
) -> None:
    """At half past midnight on a British summer day (23:30 UTC the day before) the meetings
    list opens on today, where the user is, and so does the new meeting form."""
    add_user(demo, "tz_coord", "ZZA", "mdt_coordinator")
    errors: list[str] = []
    context = browser.new_context(
        viewport={"width": 1400, "height": 900}, timezone_id="Europe/London"
    )
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.clock.set_fixed_time("2026-07-01T00:30:00+01:00")
    page.goto(demo.base_url + "/viewer/")
    sign_in(page, "tz_coord")
    page.goto(f"{demo.base_url}/viewer/#/mdt")
    page.wait_for_selector("#meeting-list li")
    assert page.input_value("#mdt-date") == "2026-07-01"
    assert page.input_value("#mdt-create input[name=date]") == "2026-07-01"
    assert not errors, errors


ALICE_MR_ZZB = DEMO_ROOT + "1.3"  # ZZB B7730021, Alice's record at ZZB

# ZZB's RIS reports Alice's ZZB study; OBR-32 names R32_REP, the primary reporter, at ZZB.
ORU_ZZB = (
    "MSH|^~\\&|R32RIS|ZZB|PACS|ZZX|20260610153000||ORU^R01^ORU_R01|R32-BROWSER|P|2.4\r"
    "PID|1||B7730021^^^ZZB^MR||DEMO^ALICE||19580312|F\r"
    "OBR|1||{accession}|MRBRAIN^MR brain|||20260610|||||||||||||||20260610153000||MR|F"
    "|||||||R32_REP&REPORTER&ROSE\r"
    "OBX|1|TX|MRBRAIN||No abnormality.||||||F\r"
)


def test_radiology_input_with_a_discrepancy_reaches_the_reporter_at_another_trust(
    demo: RunningServer, browser: Any, tmp_path: Path
) -> None:
    """R32: the MDT radiologist at ZZA records the outcome of Alice's item in the meeting's
    form, flagging a discrepancy with ZZB's report; ZZB's reporter finds it under Notices and
    acknowledges it."""
    from tests.interop.hl7_support import msa, send

    demo.cli("hl7", "sender", "add", "R32RIS", "ZZB", "--host", "127.0.0.1", "--trust", "ZZB")
    coordinator = add_user(demo, "r32_coord", "ZZA", "mdt_coordinator")
    # The reporter signs in with a password only (no token: one CLI call fewer); the MDT
    # radiologist is the server's `rad` (ZZA).
    demo.cli(
        "user", "add", "r32_rep", "--trust", "ZZB", "--role", "radiologist", "--password", PASSWORD
    )
    study = httpx.get(
        f"{demo.base_url}/api/viewer/studies/{ALICE_MR_ZZB}", headers=coordinator, timeout=30
    ).json()["study"]
    oru = ORU_ZZB.format(accession=study["accession"])
    assert msa(send(int(demo.ports["hl7"]), oru)[0])[0] == "AA"
    r = httpx.post(
        demo.base_url + "/api/mdt/meetings",
        headers=coordinator,
        json={
            "title": "Neuro MDT",
            "date": "2026-12-09",
            "team": "Neuro",
            "items": [
                {"issuer": "ZZA", "patient_id": "A100001", "study_uids": [ALICE_MR_ZZB]},
            ],
        },
        timeout=30,
    )
    assert r.status_code == 201, r.text
    errors: list[str] = []
    page = new_page(browser, demo, errors)
    sign_in(page, "rad")
    page.goto(f"{demo.base_url}/viewer/#/mdt/{r.json()['id']}")
    page.click(".mdt-outcome summary")
    form = page.locator("form.outcome-form")
    form.locator("textarea[name=opinion]").fill("Enhancing lesion, left frontal.")
    form.locator("textarea[name=plan]").fill("Neurosurgical review.")
    form.locator("input[name=discrepancy]").check()
    form.locator("textarea[name=discrepancy_note]").fill("Report says no abnormality.")
    form.locator("button[type=submit]").click()
    page.wait_for_selector(".outcome-message:has-text('the reporter was told')")
    assert "REPORTER^ROSE, ZZB" in page.inner_text(".outcome-message")
    page.wait_for_selector(".mdt-outcome li[data-outcome]:has-text('Enhancing lesion')")
    shot(page, tmp_path, "20-mdt-radiology-input")

    other = new_page(browser, demo, errors)
    sign_in(other, "r32_rep")
    other.click("a[href='#/notices']")
    notice = other.locator("li[data-notice]")
    notice.wait_for()
    assert "Report says no abnormality." in notice.inner_text()
    assert "Flagged by rad (ZZA)" in notice.inner_text()
    shot(other, tmp_path, "21-report-discrepancy-notice")
    notice.locator("textarea").fill("Addendum issued.")
    notice.locator("button:has-text('Acknowledge')").click()
    done = "li[data-notice][data-status=acknowledged]:has-text('Addendum issued.')"
    other.wait_for_selector(done)
    assert not errors, errors
