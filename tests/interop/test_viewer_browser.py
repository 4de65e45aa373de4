"""The zero-footprint viewer in a real browser (issue 12): Debian chromium driven by Playwright
against a real `solent serve` with the demo data. Canvas checks read the drawn pixels back.

Tests marked ``needs_viewer_api`` use the /api/viewer and /api/mdt routes of the server contract
(built on the `mdt` branch); the others use what the server has today: sign-in, DICOMweb,
IID and break-glass.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from solent.demo import DEMO_ROOT
from tests.conftest import RunningServer, require
from tests.interop.viewer_support import (
    add_user,
    canvas,
    differs,
    eventually,
    image_index,
    new_page,
    not_blank,
    pane,
    shot,
    sign_in,
    wait_image,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

ALICE_CT = DEMO_ROOT + "1.1"  # ZZA A100001, 24 slices, 2024
ALICE_MR = DEMO_ROOT + "1.3"  # ZZB B7730021 (same person), 16 slices, 2026
BOB_CT = DEMO_ROOT + "1.4"  # ZZB B7730444


DASH = "\N{EN DASH}"  # the pager's "1\N{EN DASH}25 of 40"


def test_app_shell_is_public_compressed_and_cached(demo: RunningServer) -> None:
    """The shell holds no patient data; hashed assets are cached for a year, index revalidated."""
    url = demo.base_url
    index = httpx.get(url + "/viewer/", headers={"Accept-Encoding": "br, gzip"}, timeout=30)
    assert index.status_code == 200 and "no-cache" in index.headers["cache-control"]
    asset = next(p for p in index.text.split('"') if p.startswith("/viewer/assets/index-"))
    r = httpx.get(url + asset, headers={"Accept-Encoding": "br, gzip"}, timeout=30)
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "br"
    assert "immutable" in r.headers["cache-control"]
    assert r.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    raw = httpx.get(url + asset, headers={"Accept-Encoding": "identity"}, timeout=30)
    assert "content-encoding" not in raw.headers and len(raw.content) > int(
        r.headers["content-length"]
    )
    assert httpx.get(url + "/viewer/%2e%2e/app.py", timeout=30).status_code == 404
    # Patient data still needs a token.
    assert httpx.get(url + "/dicomweb/studies", timeout=30).status_code == 401


def test_sign_in_read_scroll_window_and_measure(
    demo: RunningServer, browser: Any, tmp_path: Path
) -> None:
    errors: list[str] = []
    page = new_page(browser, demo, errors)
    page.fill("#sign-in input[name=username]", "rad")
    page.fill("#sign-in input[name=password]", "wrong")
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#sign-in .error:has-text('wrong user name or password')")
    sign_in(page, "rad")
    shot(page, tmp_path, "01-worklist")

    page.goto(f"{demo.base_url}/viewer/#/study/{ALICE_CT}?prior=")
    first = wait_image(page)
    assert page.locator(".thumb").count() == 1
    page.wait_for_function("document.querySelector('.thumb img')?.naturalWidth > 0")
    overlay = page.inner_text(f"{pane()} .overlay")
    assert "DEMO, Alice" in overlay and "NHS 999 000 0018" in overlay
    assert "ZZA A100001" in overlay and "Im 13/24" in overlay and "W 400 L 40" in overlay
    shot(page, tmp_path, "02-study")

    # Stack scroll: wheel, keys; the image drawn changes with the slice.
    box = page.locator(f"{pane()} .viewport").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(3):
        page.mouse.wheel(0, 120)
        page.wait_for_timeout(150)
    eventually(lambda: image_index(page) > 12, what="wheel scroll")
    after_wheel = image_index(page)
    page.keyboard.press("End")
    eventually(lambda: image_index(page) == 23, what="End key")
    eventually(
        lambda: not_blank(canvas(page)) and differs(first, canvas(page)) > 0.01,
        what="new slice drawn",
    )
    page.keyboard.press("ArrowUp")
    eventually(lambda: image_index(page) == 22, what="ArrowUp")
    assert after_wheel != 12
    assert "Pos " in page.inner_text(f"{pane()} .overlay .bl")
    shot(page, tmp_path, "03-scrolled")

    # Window/level: a preset by key and by the menu; the pixels change, the overlay says so.
    before = canvas(page)
    page.keyboard.press("1")  # CT lung
    page.wait_for_selector(f"{pane()} .overlay .br:has-text('W 1500 L -600')")
    lung = canvas(page)
    assert differs(before, lung) > 0.05
    page.select_option("#preset", "CT bone")
    page.wait_for_selector(f"{pane()} .overlay .br:has-text('W 1800 L 400')")
    # W/L by dragging (the default left-button tool).
    page.mouse.move(box["x"] + 200, box["y"] + 200)
    page.mouse.down()
    page.mouse.move(box["x"] + 260, box["y"] + 230, steps=5)
    page.mouse.up()
    assert "W 1800 L 400" not in page.inner_text(f"{pane()} .overlay .br")
    shot(page, tmp_path, "04-window")

    # Invert and flip change the drawn pixels.
    base = canvas(page)
    page.click("#invert")
    eventually(lambda: differs(base, canvas(page)) > 0.2, what="invert")
    page.click("#invert")
    page.click("#flip-v")  # the phantom is symmetric left-right, not top-bottom
    eventually(lambda: differs(base, canvas(page)) > 0.01, what="flip")
    page.click("#reset")

    # Length and elliptical ROI: real units from the pixel spacing.
    page.keyboard.press("l")
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 100, cy)
    page.mouse.down()
    page.mouse.move(cx + 100, cy, steps=8)
    page.mouse.up()
    page.wait_for_selector(f"{pane()} svg text:has-text('mm')")
    page.keyboard.press("o")
    page.mouse.move(cx - 60, cy + 40)
    page.mouse.down()
    page.mouse.move(cx + 20, cy + 100, steps=8)
    page.mouse.up()

    def annotations() -> str:
        return str(page.evaluate("(s) => document.querySelector(s + ' svg').textContent", pane()))

    eventually(lambda: "Mean" in annotations(), what="ROI statistics")
    texts = annotations()
    assert "Std Dev" in texts and "mm²" in texts, texts
    page.keyboard.press("a")
    for x, y in ((cx - 80, cy - 80), (cx, cy - 20), (cx + 60, cy - 90)):
        page.mouse.click(x, y)
    page.wait_for_selector(f"{pane()} svg text:has-text('°')")
    shot(page, tmp_path, "05-measure")

    # The help panel lists the shortcuts.
    page.keyboard.press("?")
    page.wait_for_selector("#help:not([hidden]) kbd:has-text('PageUp'), #help:not([hidden]) kbd")
    assert "CT lung" in page.inner_text("#help") and "cine" in page.inner_text("#help")
    shot(page, tmp_path, "06-help")
    assert not errors, errors


def test_break_glass_from_the_study_view(demo: RunningServer, browser: Any, tmp_path: Path) -> None:
    """A clinician of ZZA has no relationship with Bob (ZZB): the study reads as absent until
    they break glass with a reason; then the images show and the grant is on record."""
    errors: list[str] = []
    page = new_page(browser, demo, errors)
    sign_in(page, "drza")
    page.goto(f"{demo.base_url}/viewer/#/study/{BOB_CT}")
    page.wait_for_selector("text=No such study that you can see.")
    assert page.locator(".viewport").count() == 0
    page.click("#break-glass-open")
    page.wait_for_selector("#break-glass[open]")
    page.click("#bg-confirm")  # nothing chosen: refused in the dialog
    page.wait_for_selector("#break-glass .error:has-text('Choose a reason')")
    page.select_option("#break-glass select", "emergency")
    page.fill("#break-glass textarea", "collapsed in ZZA ED, unknown history")
    shot(page, tmp_path, "07-break-glass-dialog")
    page.click("#bg-confirm")
    wait_image(page)
    # The study view's banner says until when (the grant's expiry, as the timeline's does).
    banner = page.wait_for_selector(".study-head .break-glass-banner:has-text('expires')")
    assert banner is not None and re.search(r"expires \d", banner.inner_text())
    shot(page, tmp_path, "08-after-break-glass")
    grants = httpx.get(
        demo.base_url + "/api/break-glass",
        headers=add_user(demo, "privacy", "ZZB", "auditor"),
        timeout=30,
    ).json()
    assert any(g["user"] == "drza" and g["patient"]["patient_id"] == "B7730444" for g in grants)
    assert not errors, errors


def test_iid_launch_lands_in_the_viewer(demo: RunningServer, browser: Any, tmp_path: Path) -> None:
    """The EPR's launch (bearer token on the request) opens the study straight in the viewer."""
    errors: list[str] = []
    page = new_page(browser, demo, errors)
    sign_in(page, "rad")
    token = page.evaluate("sessionStorage.getItem('solent.token')")

    def with_token(route: Any) -> None:
        route.continue_(headers={**route.request.headers, "authorization": f"Bearer {token}"})

    page.route("**/IHEInvokeImageDisplay*", with_token)
    page.goto(
        f"{demo.base_url}/trusts/ZZA/IHEInvokeImageDisplay?requestType=STUDY&studyUID={ALICE_CT}"
    )
    assert page.url.endswith(f"/viewer/#/study/{ALICE_CT}")
    wait_image(page)
    shot(page, tmp_path, "09-iid-study")
    page.goto(
        f"{demo.base_url}/IHEInvokeImageDisplay?requestType=PATIENT&patientID=A100001%5E%5E%5EZZA"
    )
    assert page.url.endswith("/viewer/#/patient/ZZA/A100001")
    assert not errors, errors


def test_current_and_prior_side_by_side_scroll_and_window_in_sync(
    demo: RunningServer, browser: Any, tmp_path: Path
) -> None:
    """Alice's MR (ZZB, 2026) beside her CT (ZZA, 2024): scrolling the current moves the prior to
    the nearest slice position; W/L follows."""
    errors: list[str] = []
    page = new_page(browser, demo, errors)
    sign_in(page, "rad")
    page.goto(f"{demo.base_url}/viewer/#/study/{ALICE_MR}?prior={ALICE_CT}")
    wait_image(page, "Current")
    prior_before = wait_image(page, "Prior")
    assert "15-Jan-2024" in page.inner_text(f"{pane('Prior')} .overlay")
    # Issue 15: a ZZA reader sees the ZZB study under ZZA's own record of the same person.
    assert "ZZA A100001" in page.inner_text(f"{pane('Current')} .overlay")
    prior_index = image_index(page, "Prior")
    page.locator(f"{pane('Current')} .viewport").hover()
    # Pressed again if the current is not there in 10 s: once, under CI load, it was not
    # (suspected: the prior's slice arriving after the two-way synchronizer's guard pulled the
    # current back; see the closing note of 5 Dec). The current must end at its last slice.
    for _ in range(3):
        page.keyboard.press("End")
        with contextlib.suppress(AssertionError):
            eventually(lambda: image_index(page, "Current") == 15, timeout=10, what="last slice")
            break
    assert image_index(page, "Current") == 15, "current not at its last slice after End"
    eventually(lambda: image_index(page, "Prior") != prior_index, what="prior follows the scroll")
    eventually(lambda: differs(prior_before, canvas(page, "Prior")) > 0.01, what="prior redrawn")
    page.keyboard.press("4")  # CT brain on the current; the prior follows
    page.wait_for_selector(f"{pane('Prior')} .overlay .br:has-text('W 80 L 40')")
    shot(page, tmp_path, "10-current-and-prior")
    assert not errors, errors


# -- Against the /api/viewer and /api/mdt routes of the server contract (the `mdt` branch) ------


def require_viewer_api(srv: RunningServer, headers: dict[str, str]) -> None:
    spec = httpx.get(srv.base_url + "/api/openapi.json", headers=headers, timeout=30).json()
    paths = set(spec.get("paths", {}))
    require(
        {"/api/viewer/search", "/api/mdt/meetings"} <= paths,
        "the server's /api/viewer and /api/mdt routes (issue 12 contract, `mdt` branch)",
    )


def test_worklist_search_timeline_and_recent(
    demo: RunningServer, browser: Any, tmp_path: Path
) -> None:
    require_viewer_api(demo, add_user(demo, "rad2", "ZZA", "radiologist"))
    errors: list[str] = []
    page = new_page(browser, demo, errors)
    sign_in(page, "rad2")
    page.fill("#search input[name=nhs_number]", "999 000 0018")
    page.click("#search button[type=submit]")
    page.wait_for_selector(".patient-row")
    rows = page.locator(".patient-row")
    assert rows.count() == 1  # one person, both trusts' records grouped
    text = rows.first.inner_text()
    assert "999 000 0018" in text and "DEMO, Alice" in text
    assert "ZZA" in text and "A100001" in text and "ZZB" in text and "B7730021" in text
    shot(page, tmp_path, "11-search")
    rows.first.locator("a").click()
    page.wait_for_selector(".study-row")
    studies = page.locator(".study-row")
    descriptions = [studies.nth(i).locator("td").nth(4).inner_text() for i in range(3)]
    assert descriptions == ["MR BRAIN", "XR CHEST PA", "CT CHEST WITH CONTRAST"]  # newest first
    badges = page.locator(".study-row .trust-badge").all_inner_texts()
    assert badges == ["ZZB", "ZZA", "ZZA"]
    assert page.locator(".bg-flag").count() == 0
    shot(page, tmp_path, "12-timeline")
    page.click("text=MR BRAIN")
    wait_image(page, "Current")
    wait_image(page, "Prior")  # the newest prior hangs beside it
    assert "XR CHEST PA" in page.inner_text("#prior-select")
    page.wait_for_selector("#reports")
    page.click("text=Worklist")
    page.wait_for_selector("#recent .patient-row:has-text('DEMO, Alice')")
    # Paging: a broad search shows at most a page and says how many there are.
    page.fill("#search input[name=q]", "DEMO")
    page.click("#search button[type=submit]")
    page.wait_for_selector(".count")
    assert "patient" in page.inner_text(".count")
    total = int(page.inner_text(".count").split()[0])  # Alice and Erin for a ZZA radiologist
    assert total >= 2 and page.locator("#results .patient-row").count() == total
    # The pager ("2\N{EN DASH}3 of 3"): the second page from the first person on, and back.
    page.goto(f"{demo.base_url}/viewer/#/?q=DEMO&offset=1")
    page.wait_for_selector(f".pager:has-text('2{DASH}{total} of {total}')")
    assert page.locator("#results .patient-row").count() == total - 1
    page.click(".pager a:has-text('Previous')")
    page.wait_for_selector(f".pager:has-text('1{DASH}{total} of {total}')")
    assert (
        page.locator("#results .patient-row").count() == total
        and page.locator("#search-capped").count() == 0
    )
    assert not errors, errors


def test_break_glass_on_the_timeline(demo: RunningServer, browser: Any, tmp_path: Path) -> None:
    require_viewer_api(demo, add_user(demo, "drzc", "ZZC", "clinician"))
    errors: list[str] = []
    page = new_page(browser, demo, errors)
    sign_in(page, "drzc")
    page.goto(f"{demo.base_url}/viewer/#/patient/ZZB/B7730444")
    page.wait_for_selector("text=that you can see")
    assert page.locator(".study-row").count() == 0  # nothing hinted at
    page.click("#break-glass-open")
    page.select_option("#break-glass select", "emergency")
    page.fill("#break-glass textarea", "unconscious in ZZC minor injuries unit")
    page.click("#bg-confirm")
    page.wait_for_selector(".break-glass-banner:has-text('expires')")
    page.wait_for_selector(".study-row .bg-flag")
    shot(page, tmp_path, "13-timeline-break-glass")
    assert not errors, errors


@pytest.mark.timeout(900)  # six browser pages on a shared 2-core machine
def test_two_mdt_meetings_follow_their_own_presenter(
    demo: RunningServer, browser: Any, tmp_path: Path
) -> None:
    """Two meetings at once: each follower's canvas follows its own presenter only; a late
    joiner gets the current view; the presenter role is handed over; outcomes are saved."""
    coordinator = add_user(demo, "coord", "ZZA", "mdt_coordinator")
    require_viewer_api(demo, coordinator)
    for name in ("p1", "f1", "p2", "f2", "late1"):
        add_user(demo, name, "ZZA", "radiologist")
    errors: list[str] = []
    item = {"issuer": "ZZA", "patient_id": "A100001", "study_uids": [ALICE_CT]}

    # Meeting 1 through the coordinator's form, meeting 2 through the API.
    coord = new_page(browser, demo, errors)
    sign_in(coord, "coord")
    coord.goto(f"{demo.base_url}/viewer/#/mdt")
    coord.fill("#mdt-create input[name=title]", "Lung MDT")
    coord.fill("#mdt-create input[name=team]", "Thoracic")
    coord.fill("#mdt-create textarea[name=items]", f"ZZA A100001 {ALICE_CT}")
    coord.click("#mdt-create button[type=submit]")
    coord.wait_for_url("**/viewer/#/mdt/*")
    first = coord.url.rsplit("/", 1)[-1]
    date = httpx.get(
        f"{demo.base_url}/api/mdt/meetings/{first}", headers=coordinator, timeout=30
    ).json()["date"]
    r = httpx.post(
        demo.base_url + "/api/mdt/meetings",
        headers=coordinator,
        json={"title": "Neuro MDT", "date": date, "team": "Neuro", "items": [item]},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    second = str(r.json()["id"])
    coord.goto(f"{demo.base_url}/viewer/#/mdt?date={date}")
    coord.wait_for_selector(f"[data-meeting='{first}']")
    coord.wait_for_selector(f"[data-meeting='{second}']")

    def join(name: str, meeting: str) -> Any:
        page = new_page(browser, demo, errors)
        sign_in(page, name)
        page.goto(f"{demo.base_url}/viewer/#/mdt/{meeting}")
        page.wait_for_selector("#mdt-status")
        return page

    p1, f1, p2, f2 = join("p1", first), join("f1", first), join("p2", second), join("f2", second)
    for presenter, name in ((p1, "p1"), (p2, "p2")):
        presenter.click("#mdt-claim")
        presenter.wait_for_selector(f"#mdt-status:has-text('Presenter: {name} (you)')")
        presenter.click(f".mdt-open[data-study='{ALICE_CT}']")
        wait_image(presenter)
    f1_start = wait_image(f1)
    f2_start = wait_image(f2)
    f1.wait_for_selector("#mdt-status:has-text('Presenter: p1')")
    assert image_index(f1) == image_index(p1) and image_index(f2) == image_index(p2)

    # p1 scrolls to the last slice and changes W/L: f1 follows, f2 (other meeting) does not.
    p1.locator(f"{pane()} .viewport").hover()
    p1.keyboard.press("End")
    p1.keyboard.press("1")
    eventually(lambda: image_index(f1) == 23, what="f1 follows p1's scroll")
    eventually(lambda: differs(f1_start, canvas(f1)) > 0.05, what="f1's canvas redrawn")
    f1.wait_for_selector(f"{pane()} .overlay .br:has-text('W 1500 L -600')")
    f2.wait_for_timeout(2000)
    assert image_index(f2) == image_index(p2) != 23
    assert differs(f2_start, canvas(f2)) < 0.01
    shot(f1, tmp_path, "14-mdt-follower")

    # A late joiner gets the current state in its welcome.
    late = join("late1", first)
    eventually(lambda: image_index(late) == 23, what="late joiner at the presenter's slice")

    # Handover: p1 hands to f1, who then drives; p1 follows.
    p1.select_option("#mdt-handover-to", "f1")
    p1.click("#mdt-handover")
    f1.wait_for_selector("#mdt-status:has-text('Presenter: f1 (you)')")
    f1.wait_for_selector(f"{pane()} .viewport:not(.following)")  # f1 now drives
    p1.wait_for_selector(f"{pane()} .viewport.following")
    f1.locator(f"{pane()} .viewport").hover()
    f1.keyboard.press("Home")
    eventually(lambda: image_index(late) == 0, what="late joiner follows the new presenter")

    # Outcome notes per patient, written by a clinician of the meeting.
    p1.fill(".outcome", "For CT-guided biopsy; discuss at next meeting")
    p1.click("text=Save outcome")
    eventually(
        lambda: (
            httpx.get(
                f"{demo.base_url}/api/mdt/meetings/{first}", headers=coordinator, timeout=30
            ).json()["items"][0]["outcome"]
            or ""
        ).startswith("For CT-guided biopsy"),
        what="outcome saved",
    )
    assert not errors, errors
