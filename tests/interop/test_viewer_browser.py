"""The zero-footprint viewer in a real browser (issue 12): Debian chromium driven by Playwright
against a real `solent serve` with the demo data. Canvas checks read the drawn pixels back.

Screenshots are kept under each test's output directory (docs/viewer.md uses them).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import numpy as np
import pytest

from solent.demo import DEMO_ROOT
from tests.conftest import RunningServer, require
from tests.interop.oidc_provider import OidcProvider
from tests.interop.viewer_support import (
    PASSWORD,
    add_user,
    bright_box,
    canvas,
    canvas_box,
    canvas_fits_its_pane,
    differs,
    eventually,
    image_index,
    new_page,
    not_blank,
    pane,
    settled,
    shot,
    shown,
    sign_in,
    wait_image,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

ALICE_CT = DEMO_ROOT + "1.1"  # ZZA A100001, 24 slices, 2024
ALICE_MR = DEMO_ROOT + "1.3"  # ZZB B7730021 (same person), 16 slices, 2026
BOB_CT = DEMO_ROOT + "1.4"  # ZZB B7730444
ERIN_CT = DEMO_ROOT + "1.8"  # ZZA A100002, NHS number 9990000019 in its header (check digit wrong)


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
    eventually(lambda: canvas_fits_its_pane(page), what="the canvas sized to its pane")
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


# A browser without WebGL (a locked-down desktop, a remote session without a GPU): every
# WebGL context request fails, as it does there.
NO_WEBGL = """
(() => {
  const get = HTMLCanvasElement.prototype.getContext;
  HTMLCanvasElement.prototype.getContext = function (kind, ...rest) {
    if (String(kind).startsWith('webgl') || kind === 'experimental-webgl') return null;
    return get.call(this, kind, ...rest);
  };
})();
"""


def test_an_invalid_nhs_number_in_an_image_header_is_not_shown_as_one(
    demo: RunningServer, browser: Any
) -> None:
    """Erin's images carry an NHS number whose check digit is wrong: the archive does not take
    it (the banner shows none) and the image overlay shows it marked invalid, never in the 3-3-4
    form a valid NHS number is shown in."""
    errors: list[str] = []
    page = new_page(browser, demo, errors)
    sign_in(page, "rad")
    page.goto(f"{demo.base_url}/viewer/#/study/{ERIN_CT}")
    wait_image(page)
    page.wait_for_selector(".study-head .patient-header")
    assert "NHS —" in page.inner_text(".study-head .patient-header")
    overlay = page.inner_text(f"{pane()} .overlay")
    assert "DEMO, Erin" in overlay and "999 000 0019" not in overlay
    assert "NHS 9990000019 (invalid)" in overlay
    assert not errors, errors


def test_without_webgl_the_viewer_draws_on_the_cpu(
    demo: RunningServer, browser: Any, tmp_path: Path
) -> None:
    """Issue 12: no WebGL, still images: the viewer takes Cornerstone's CPU rendering path, and
    scrolling and window/level redraw the pixels."""
    errors: list[str] = []
    page = new_page(browser, demo, errors)
    page.context.add_init_script(NO_WEBGL)
    page.reload()
    assert page.evaluate("!!document.createElement('canvas').getContext('webgl2')") is False
    sign_in(page, "rad")
    page.goto(f"{demo.base_url}/viewer/#/study/{ALICE_CT}?prior=")
    first = wait_image(page)
    assert page.evaluate("document.documentElement.dataset.rendering") == "cpu"
    eventually(lambda: canvas_fits_its_pane(page), what="the canvas sized to its pane")
    page.locator(f"{pane()} .viewport").hover()
    page.keyboard.press("End")
    eventually(lambda: image_index(page) == 23, what="End key")
    eventually(lambda: differs(first, canvas(page)) > 0.01, what="the last slice drawn")
    last = canvas(page)
    page.keyboard.press("4")  # CT brain
    page.wait_for_selector(f"{pane()} .overlay .br:has-text('W 80 L 40')")
    eventually(lambda: differs(last, canvas(page)) > 0.01, what="window/level redrawn")
    assert not_blank(canvas(page))
    shot(page, tmp_path, "15-cpu-rendering")
    assert not errors, errors


ORU = """
MSH|^~\\&|RIS|ZZA|PACS|ZZX|20260105153000||ORU^R01^ORU_R01|{control}|P|2.4|||||GBR||EN
PID|1||A100001^^^ZZA^MR~9990000018^^^NHS^NH||DEMO^ALICE||19580312|F
ORC|RE|OCS-1^EPR_A|{accession}^RIS_A||CM
OBR|1|OCS-1^EPR_A|{accession}^RIS_A|CCHAPC^CT chest^NICIP|||20240115114200|||||||||C1^CONSULTANT^CLARE^^^DR||{accession}||||20240115152900||CT|{status}|||||||R1&REPORTER&RITA&&&DR
OBX|1|TX|CCHAPC^CT chest^NICIP||{text}||||||{status}
"""  # noqa: E501


def test_the_report_beside_the_images_with_its_versions(
    demo: RunningServer, browser: Any, tmp_path: Path
) -> None:
    """Issue 12: the RIS's report (HL7 ORU) shows beside the images; a preliminary then a final
    report show as the final with both versions to open."""
    from tests.interop.hl7_support import msa, send

    demo.cli("hl7", "sender", "add", "RIS", "ZZA", "--host", "127.0.0.1", "--trust", "ZZA")
    headers = add_user(demo, "rep", "ZZA", "radiologist")
    study = httpx.get(
        f"{demo.base_url}/api/viewer/studies/{ALICE_CT}", headers=headers, timeout=30
    ).json()["study"]
    accession = study["accession"]
    for n, (status, text) in enumerate(
        (("P", "Preliminary: no pneumothorax."), ("F", "Final: no pneumothorax; old rib fracture."))
    ):
        message = ORU.format(control=f"VIEWREP{n}", accession=accession, status=status, text=text)
        assert msa(send(int(demo.ports["hl7"]), message)[0])[0] == "AA"
    errors: list[str] = []
    page = new_page(browser, demo, errors)
    sign_in(page, "rep")
    page.goto(f"{demo.base_url}/viewer/#/study/{ALICE_CT}?prior=")
    wait_image(page)
    report = page.locator("#reports article.report").first
    report.wait_for()
    assert "FINAL" in report.inner_text() and "old rib fracture" in report.inner_text()
    assert "15-Jan-2024 15:29 REPORTER, Rita" in report.locator("header").inner_text()
    report.locator("summary:has-text('2 versions')").click()
    versions = report.locator(".version")
    assert versions.count() == 2
    shown = " ".join(versions.all_inner_texts())
    assert "Preliminary: no pneumothorax." in shown and "old rib fracture" in shown
    shot(page, tmp_path, "16-report-versions")
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


def fresh_page(browser: Any, errors: list[str]) -> Any:
    """A new browser context (no session): how a link from the EPR opens."""
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(60_000)
    return page


def sign_in_form(page: Any, name: str) -> None:
    page.fill("#sign-in input[name=username]", name)
    page.fill("#sign-in input[name=password]", PASSWORD)
    page.click("#sign-in button[type=submit]")


def test_iid_launch_from_a_plain_browser_signs_in_and_lands_on_the_study(
    demo: RunningServer, browser: Any, tmp_path: Path
) -> None:
    """The EPR opens the IID URL in a browser without any token: the viewer asks the user to
    sign in, then opens the study (pixels drawn). With the session in place, the next launch
    (a patient) goes straight through."""
    errors: list[str] = []
    page = fresh_page(browser, errors)
    page.goto(
        f"{demo.base_url}/trusts/ZZA/IHEInvokeImageDisplay?requestType=STUDY&studyUID={ALICE_CT}"
    )
    assert page.url.endswith(f"/viewer/#/launch/ZZA?requestType=STUDY&studyUID={ALICE_CT}")
    page.wait_for_selector("#sign-in")
    sign_in_form(page, "rad")
    wait_image(page)
    assert page.url.endswith(f"/viewer/#/study/{ALICE_CT}")
    assert "DEMO, Alice" in page.inner_text(f"{pane()} .overlay")
    shot(page, tmp_path, "09-iid-study")
    page.go_back()  # the launch entry was replaced: Back does not launch again
    assert "#/launch" not in page.url

    page.goto(
        f"{demo.base_url}/IHEInvokeImageDisplay?requestType=PATIENT&patientID=A100001%5E%5E%5EZZA"
    )
    page.wait_for_selector(f".study-row[data-study='{ALICE_CT}']")
    assert page.url.endswith("/viewer/#/patient/ZZA/A100001")
    assert page.locator("#sign-in").count() == 0
    assert page.locator(f".study-row[data-study='{ALICE_MR}']").count() == 1  # linked record
    assert not errors, errors


def test_a_user_of_two_trusts_signs_in_for_one_and_sees_that_trusts_patients_only(
    demo: RunningServer, browser: Any
) -> None:
    """R33: the organisation chosen at sign-in is the session's trust; Erin (known at ZZA only)
    is out of reach of a ZZB session, Bob (ZZB) is shown; an organisation not held is refused."""
    add_user(demo, "drab", "ZZA", "clinician", also=("ZZB",))
    errors: list[str] = []
    page = fresh_page(browser, errors)
    page.goto(f"{demo.base_url}/viewer/")
    page.fill("#sign-in input[name=org]", "ZZC")
    sign_in_form(page, "drab")
    page.wait_for_selector("#sign-in .error:has-text('not at ZZC')")
    page.fill("#sign-in input[name=org]", "zzb")
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#who:has-text('drab · ZZB')")
    page.goto(f"{demo.base_url}/viewer/#/patient/ZZB/B7730444")
    page.wait_for_selector(f".study-row[data-study='{BOB_CT}']")
    page.goto(f"{demo.base_url}/viewer/#/patient/ZZA/A100002")
    page.wait_for_selector("#app .error")
    assert page.locator(f".study-row[data-study='{ERIN_CT}']").count() == 0
    assert not errors, errors


def test_iid_patient_launch_from_a_plain_browser(demo: RunningServer, browser: Any) -> None:
    """requestType=PATIENT by NHS number from ZZB's EPR, no token: sign in, the timeline."""
    errors: list[str] = []
    page = fresh_page(browser, errors)
    page.goto(
        f"{demo.base_url}/trusts/ZZB/IHEInvokeImageDisplay?requestType=PATIENT"
        "&patientID=9990000018%5E%5E%5E%262.16.840.1.113883.2.1.4.1%26ISO"
    )
    page.wait_for_selector("#sign-in")
    assert "#/launch/ZZB?" in page.url
    sign_in_form(page, "drza")
    page.wait_for_selector(f".study-row[data-study='{ALICE_MR}']")
    assert page.locator(f".study-row[data-study='{ALICE_CT}']").count() == 1
    assert "DEMO, Alice" in page.inner_text(".patient-header")
    assert not errors, errors


def test_iid_launch_of_several_studies_opens_the_newest_with_the_rest_listed(
    demo: RunningServer, browser: Any
) -> None:
    errors: list[str] = []
    page = fresh_page(browser, errors)
    page.goto(
        f"{demo.base_url}/IHEInvokeImageDisplay?requestType=STUDY&studyUID={ALICE_CT}%2C{ALICE_MR}"
    )
    sign_in_form(page, "rad")
    wait_image(page)
    assert f"#/study/{ALICE_MR}?launch={ALICE_MR},{ALICE_CT}" in page.url  # newest first
    listed = page.locator(".launch-list")
    assert "2 studies launched" in listed.inner_text()
    shown = listed.locator(f"strong[data-study='{ALICE_MR}']").inner_text()
    assert "2026" in shown and "ZZB" in shown and "MR" in shown, shown
    listed.locator(f"a[data-study='{ALICE_CT}']").click()
    page.wait_for_function(f"location.hash.startsWith('#/study/{ALICE_CT}?')")
    # The MR's pane goes when the route changes: wait for the CT's before reading pixels.
    page.wait_for_selector(f"{pane()} .overlay:has-text('15-Jan-2024')")
    wait_image(page)
    assert page.locator(f".launch-list strong[data-study='{ALICE_CT}']").count() == 1
    assert not errors, errors


def test_iid_launch_of_a_patient_not_in_your_care_looks_like_one_that_does_not_exist(
    demo: RunningServer, browser: Any
) -> None:
    """Bob has records at ZZB only: a ZZA clinician's launch of his study reads exactly as a
    launch of a study that does not exist; break glass then opens it."""
    errors: list[str] = []
    add_user(demo, "drlaunch", "ZZA", "clinician")
    page = fresh_page(browser, errors)
    texts = []
    for uid in ("2.25.99999999901", BOB_CT):
        page.goto(
            f"{demo.base_url}/trusts/ZZB/IHEInvokeImageDisplay?requestType=STUDY&studyUID={uid}"
        )
        if not texts:
            sign_in_form(page, "drlaunch")
        page.wait_for_selector("#app .error:has-text('No such patient or study')")
        texts.append(page.inner_text("#app"))
        assert "BOB" not in page.content() and "B7730444" not in page.content()
    assert texts[0] == texts[1]
    assert "Break glass" in texts[1]
    page.click("#break-glass-open")
    page.select_option("#break-glass select", "emergency")
    page.fill("#break-glass textarea", "EPR launch from ZZA ED, unconscious")
    page.click("#bg-confirm")
    wait_image(page)
    assert page.url.endswith(f"#/study/{BOB_CT}")
    assert not errors, errors


def test_single_sign_on_through_the_identity_provider(
    demo: RunningServer, idp: OidcProvider, browser: Any, tmp_path: Path
) -> None:
    """An EPR launch without a token; the user chooses the IdP, signs in on its page, comes back
    (authorization code + PKCE, the code exchanged by the browser) and lands on the study: the
    viewer's bearer token is the IdP's access token."""
    errors: list[str] = []
    page = fresh_page(browser, errors)
    page.goto(
        f"{demo.base_url}/trusts/ZZA/IHEInvokeImageDisplay?requestType=STUDY&studyUID={ALICE_CT}"
    )
    page.click("#sign-in-oidc:has-text('Sign in with Test IdP')")
    page.wait_for_selector("#idp-user")
    assert page.url.startswith(f"{idp.issuer}/authorize?")
    page.fill("#idp-user", "dr.sso")
    page.fill("#idp-password", "not it")
    page.click("#idp-submit")
    page.wait_for_selector("text=wrong user name or password")
    page.fill("#idp-user", "dr.sso")
    page.fill("#idp-password", PASSWORD)
    issued = idp.token_requests.count("issued")
    page.click("#idp-submit")
    wait_image(page)
    assert page.url == f"{demo.base_url}/viewer/#/study/{ALICE_CT}"  # no code left in the URL
    page.wait_for_selector("#who:has-text('dr.sso')")
    assert "ZZA" in page.inner_text("#who") and "radiologist" in page.inner_text("#who")
    assert idp.token_requests.count("issued") == issued + 1
    token = page.evaluate("sessionStorage.getItem('solent.token')")
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == idp.issuer
    shot(page, tmp_path, "20-sso-study")
    assert not errors, errors


def test_smart_ehr_launch_opens_the_launch_patients_studies_only(
    demo: RunningServer, idp: OidcProvider, browser: Any
) -> None:
    """R23: the EPR opens /viewer/?iss=<Solent's FHIR base>&launch=<id>; the viewer asks the
    identity provider for the launch scopes, comes back with the launch patient and opens their
    newest study with the rest listed. The token reads that patient record only."""
    headers = add_user(demo, "smartcheck", "ZZA", "radiologist")
    found = httpx.get(
        f"{demo.base_url}/fhir/ImagingStudy",
        params={"identifier": f"urn:oid:{ALICE_CT}"},
        headers=headers,
        timeout=30,
    ).json()
    patient = found["entry"][0]["resource"]["subject"]["reference"].removeprefix("Patient/")
    idp.launches["epr-launch-1"] = patient
    errors: list[str] = []
    page = fresh_page(browser, errors)
    page.goto(f"{demo.base_url}/viewer/?iss={demo.base_url}/fhir&launch=epr-launch-1")
    page.wait_for_selector("#idp-user")
    assert "launch=epr-launch-1" in page.url and "patient%2FImagingStudy.rs" in page.url
    page.fill("#idp-user", "dr.sso")
    page.fill("#idp-password", PASSWORD)
    page.click("#idp-submit")
    wait_image(page)
    alice_cr = DEMO_ROOT + "1.2"  # ZZA A100001's newest study; the CT is listed beside it
    assert f"#/study/{alice_cr}?launch=" in page.url and ALICE_CT in page.url
    assert ALICE_MR not in page.url  # the same person's ZZB record is not the launch patient
    token = page.evaluate("sessionStorage.getItem('solent.token')")
    assert _claims(token)["patient"] == patient
    other = httpx.get(
        f"{demo.base_url}/fhir/ImagingStudy",
        params={"identifier": f"urn:oid:{ALICE_MR}"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()
    assert other.get("entry", []) == []
    # A launch for another FHIR server is refused, saying so.
    page.goto(f"{demo.base_url}/viewer/?iss=https://elsewhere.example/fhir&launch=x")
    page.wait_for_selector("#app .error:has-text('launched it for https://elsewhere')")
    assert not errors, errors


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def _renewed(page: Any, old: str) -> str:
    """The bearer token the viewer holds once it has replaced ``old``."""
    eventually(
        lambda: page.evaluate("sessionStorage.getItem('solent.token')") not in (old, None),
        what="the viewer renewed its token",
    )
    token: str = page.evaluate("sessionStorage.getItem('solent.token')")
    return token


def _me(page: Any, demo: RunningServer, token: str) -> int:
    status: int = page.request.get(
        f"{demo.base_url}/api/auth/me", headers={"Authorization": f"Bearer {token}"}
    ).status
    return status


def test_a_long_session_renews_its_token_before_it_expires(
    demo: RunningServer, browser: Any, tmp_path: Path
) -> None:
    """A reporting session or MDT meeting outlives one token (60 minutes): at four fifths of its
    lifetime the viewer renews it at /api/auth/token, within the same session, and the reader
    is never sent back to the sign-in form. The page's clock is moved on, not waited for."""
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(60_000)
    page.clock.install()
    page.goto(demo.base_url + "/viewer/")
    sign_in(page, "rad")
    old = page.evaluate("sessionStorage.getItem('solent.token')")
    life = _claims(old)["exp"] - _claims(old)["iat"]
    page.clock.fast_forward(int(life * 0.5 * 1000))
    time.sleep(0.5)
    assert page.evaluate("sessionStorage.getItem('solent.token')") == old, "renewed too early"
    page.clock.fast_forward(int(life * 0.35 * 1000))
    fresh = _renewed(page, old)
    assert _claims(fresh)["auth_time"] == _claims(old)["auth_time"]  # the same session
    assert _me(page, demo, fresh) == 200
    page.wait_for_selector("#who:has-text('rad')")
    assert not page.locator("#sign-in").count(), "sent back to sign-in"
    # A reload keeps the session and plans its next renewal again.
    page.reload()
    page.wait_for_selector("#who:has-text('rad')")
    page.clock.fast_forward(int(life * 0.85 * 1000))
    assert _me(page, demo, _renewed(page, fresh)) == 200
    assert not errors, errors
    context.close()


def test_single_sign_on_renews_with_the_identity_providers_refresh_token(
    demo: RunningServer, idp: OidcProvider, browser: Any, tmp_path: Path
) -> None:
    """Signed in through the IdP, the viewer renews with the refresh token the IdP gave (the
    refresh_token grant at the IdP's token endpoint; the IdP rotates it), not at Solent."""
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(60_000)
    page.clock.install()
    page.goto(f"{demo.base_url}/viewer/")
    page.click("#sign-in-oidc")
    page.wait_for_selector("#idp-user")
    page.fill("#idp-user", "dr.sso")
    page.fill("#idp-password", PASSWORD)
    page.click("#idp-submit")
    page.wait_for_selector("#who:has-text('dr.sso')")
    old = page.evaluate("sessionStorage.getItem('solent.token')")
    refreshed = idp.token_requests.count("refreshed")
    page.clock.fast_forward(int(idp.token_seconds * 0.85 * 1000))
    fresh = _renewed(page, old)
    assert _claims(fresh)["iss"] == idp.issuer
    assert idp.token_requests.count("refreshed") == refreshed + 1
    assert _me(page, demo, fresh) == 200
    # The rotated refresh token is the one kept: a second renewal works too.
    page.clock.fast_forward(int(idp.token_seconds * 0.85 * 1000))
    _renewed(page, fresh)
    assert idp.token_requests.count("refreshed") == refreshed + 2
    page.wait_for_selector("#who:has-text('dr.sso')")
    assert not errors, errors
    context.close()


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
    page.keyboard.press("End")
    eventually(lambda: image_index(page, "Current") == 15, what="the current at its last slice")
    eventually(lambda: image_index(page, "Prior") != prior_index, what="prior follows the scroll")
    eventually(lambda: differs(prior_before, canvas(page, "Prior")) > 0.01, what="prior redrawn")
    # The prior's new image does not pull the current back (slice sync runs one way at a time,
    # from the pane the user drives).
    time.sleep(1.0)
    assert image_index(page, "Current") == 15, "the prior pulled the current off its last slice"
    page.keyboard.press("4")  # CT brain on the current; the prior follows
    page.wait_for_selector(f"{pane('Prior')} .overlay .br:has-text('W 80 L 40')")
    # Scrolling the prior drives the current the other way.
    prior_index = image_index(page, "Prior")
    page.locator(f"{pane('Prior')} .viewport").hover()
    for _ in range(4):
        page.mouse.wheel(0, -120)
    eventually(lambda: image_index(page, "Prior") < prior_index, what="the prior scrolled")
    eventually(lambda: image_index(page, "Current") < 15, what="the current follows the prior")
    shot(page, tmp_path, "10-current-and-prior")
    assert not errors, errors


# -- Against the /api/viewer and /api/mdt routes ----------------------------------------------


def require_viewer_api(srv: RunningServer, headers: dict[str, str]) -> None:
    spec = httpx.get(srv.base_url + "/api/openapi.json", headers=headers, timeout=30).json()
    paths = set(spec.get("paths", {}))
    require(
        {"/api/viewer/search", "/api/mdt/meetings"} <= paths,
        "the server's /api/viewer and /api/mdt routes (issue 12)",
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
    wait_image(page, "Prior")  # no prior shares the MR brain's region: the newest hangs
    hung = page.locator("#prior-select option:checked")
    assert "XR CHEST PA" in hung.inner_text() and hung.get_attribute("data-relevance") == ""
    # The CT chest hangs the chest X-ray, its relevant prior (R19: a body region in common),
    # before the newer MR brain, and says why.
    page.goto(f"{demo.base_url}/viewer/#/study/{ALICE_CT}")
    wait_image(page, "Prior")
    hung = page.locator("#prior-select option:checked")
    assert "XR CHEST PA" in hung.inner_text() and "same body region" in hung.inner_text()
    assert hung.get_attribute("data-relevance") == "region"
    page.goto(f"{demo.base_url}/viewer/#/study/{ALICE_MR}")
    page.wait_for_selector("#reports")
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
    f1_start = settled(f1)
    f2_start = settled(f2)
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
    assert "W 1500 L -600" not in f2.inner_text(f"{pane()} .overlay .br")
    assert differs(f2_start, canvas(f2)) < 0.01

    # p1 measures a length: f1 draws it (its label in mm, the pixels along it), f2 does not.
    def lengths(page: Any) -> list[str]:
        texts = page.locator(f"{pane()} svg text").all_text_contents()
        return [t for t in texts if t.strip().endswith("mm")]

    away = (5, 5)  # off the image: the pointer is hidden on followers
    p1.mouse.move(*away)
    eventually(lambda: f1.locator(".mdt-pointer").is_hidden(), what="f1's pointer hidden")
    f1_plain, f2_plain = shown(f1), shown(f2)
    box = p1.locator(f"{pane()} .viewport").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    p1.keyboard.press("l")
    p1.mouse.move(cx - 120, cy + 40)
    p1.mouse.down()
    p1.mouse.move(cx + 80, cy + 40, steps=8)
    p1.mouse.up()
    p1.mouse.move(*away)
    eventually(lambda: len(lengths(p1)) == 1, what="p1's length measured")
    eventually(lambda: lengths(f1) == lengths(p1), what="f1 shows p1's length")
    eventually(lambda: f1.locator(".mdt-pointer").is_hidden(), what="f1's pointer hidden")
    marked = shown(f1)
    assert int((np.abs(marked - f1_plain).max(axis=2) > 40).sum()) > 100  # the line is drawn
    f2.wait_for_timeout(1000)
    assert lengths(f2) == [] and differs(f2_plain, shown(f2)) < 0.001
    shot(f1, tmp_path, "14-mdt-follower")

    # A late joiner gets the current state, measurement included, in its welcome.
    late = join("late1", first)
    eventually(lambda: image_index(late) == 23, what="late joiner at the presenter's slice")
    eventually(lambda: lengths(late) == lengths(p1), what="late joiner shows the length")

    # Handover: p1 hands to f1, who then drives; p1 follows.
    p1.select_option("#mdt-handover-to", "f1")
    p1.click("#mdt-handover")
    f1.wait_for_selector("#mdt-status:has-text('Presenter: f1 (you)')")
    f1.wait_for_selector(f"{pane()} .viewport:not(.following)")  # f1 now drives
    p1.wait_for_selector(f"{pane()} .viewport.following")
    f1.locator(f"{pane()} .viewport").hover()
    f1.keyboard.press("Home")
    eventually(lambda: image_index(late) == 0, what="late joiner follows the new presenter")
    assert lengths(late) == []  # the measurement was on the slice the presenter left

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


def _point_on(page: Any, fx: float, fy: float) -> tuple[float, float]:
    """The page point (CSS px) at fractions (fx, fy) of the phantom's box on the canvas."""
    box = canvas_box(page)
    x0, y0, x1, y1 = bright_box(canvas(page))
    s = box["scale"]
    return box["x"] + (x0 + fx * (x1 - x0)) / s, box["y"] + (y0 + fy * (y1 - y0)) / s


def _zoom(page: Any) -> str:
    text = str(page.inner_text(f"{pane()} .overlay .br"))
    return text.split("Zoom ", 1)[1].split()[0]


@pytest.mark.timeout(600)
def test_mdt_follower_cannot_drift_and_sees_pointer_zoom_and_pan_where_drawn(
    demo: RunningServer, browser: Any, tmp_path: Path
) -> None:
    """A follower's own mouse does not move its view; the presenter's pointer lands on the same
    point of the image in a window of another shape; zoom and pan are followed on the canvas;
    the presenter's removal of a measurement reaches the follower; after a handover the new
    presenter's mouse tools work again."""
    coordinator = add_user(demo, "coord2", "ZZA", "mdt_coordinator")
    require_viewer_api(demo, coordinator)
    for name in ("pp", "ff"):
        add_user(demo, name, "ZZA", "radiologist")
    r = httpx.post(
        demo.base_url + "/api/mdt/meetings",
        headers=coordinator,
        json={
            "title": "Pointer MDT",
            "date": "2026-12-07",
            "team": "Thoracic",
            "items": [{"issuer": "ZZA", "patient_id": "A100001", "study_uids": [ALICE_CT]}],
        },
        timeout=30,
    )
    assert r.status_code == 201, r.text
    meeting = r.json()["id"]
    errors: list[str] = []

    def join(name: str, size: tuple[int, int]) -> Any:
        page = new_page(browser, demo, errors, size)
        sign_in(page, name)
        page.goto(f"{demo.base_url}/viewer/#/mdt/{meeting}")
        page.wait_for_selector("#mdt-status")
        return page

    pres, fol = join("pp", (1400, 1000)), join("ff", (1500, 650))  # tall and wide windows
    pres.click("#mdt-claim")
    pres.wait_for_selector("#mdt-status:has-text('Presenter: pp (you)')")
    pres.click(f".mdt-open[data-study='{ALICE_CT}']")
    wait_image(pres)
    wait_image(fol)
    eventually(lambda: image_index(fol) == image_index(pres), what="follower at the slice")
    p_box, f_box = canvas_box(pres), canvas_box(fol)
    # The two canvases differ in shape, so a fraction of the element lands elsewhere.
    assert abs(p_box["width"] / p_box["height"] - f_box["width"] / f_box["height"]) > 0.3

    # Drift: the follower's wheel, left, middle and right drags change nothing.
    f_view = fol.locator(f"{pane()} .viewport").bounding_box()
    fx, fy = f_view["x"] + f_view["width"] / 2, f_view["y"] + f_view["height"] / 2
    before = (image_index(fol), fol.inner_text(f"{pane()} .overlay .br"), canvas(fol))
    fol.mouse.move(fx, fy)
    for _ in range(3):
        fol.mouse.wheel(0, 120)
        fol.wait_for_timeout(100)
    for button in ("left", "middle", "right"):
        fol.mouse.move(fx, fy)
        fol.mouse.down(button=button)
        fol.mouse.move(fx + 80, fy + 60, steps=6)
        fol.mouse.up(button=button)
    fol.wait_for_timeout(500)
    assert image_index(fol) == before[0]
    assert fol.inner_text(f"{pane()} .overlay .br") == before[1]
    assert differs(before[2], canvas(fol)) < 0.01

    # The pointer: the presenter points at a spot of the phantom; the follower's red dot sits
    # over the same spot of its own (differently shaped, differently scaled) picture.
    for fx_, fy_ in ((0.3, 0.4), (0.75, 0.6)):
        pres.mouse.move(*_point_on(pres, fx_, fy_), steps=3)
        want = _point_on(fol, fx_, fy_)

        def dot_at(want: tuple[float, float] = want) -> bool:
            dot = fol.locator(".mdt-pointer")
            if dot.is_hidden():
                return False
            b = dot.bounding_box()
            got = (b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
            return abs(got[0] - want[0]) <= 4 and abs(got[1] - want[1]) <= 4

        eventually(dot_at, what=f"the follower's pointer over the phantom at {fx_, fy_}")
    shot(fol, tmp_path, "20-mdt-pointer")

    # Zoom (right drag on the presenter): the follower shows the same zoom, and the phantom on
    # its canvas shrinks by the same factor as on the presenter's.
    p_start, f_start = bright_box(canvas(pres)), bright_box(canvas(fol))
    p_view = pres.locator(f"{pane()} .viewport").bounding_box()
    px, py = p_view["x"] + p_view["width"] / 2, p_view["y"] + p_view["height"] / 2
    pres.mouse.move(px, py)
    pres.mouse.down(button="right")
    pres.mouse.move(px, py - 120, steps=8)
    pres.mouse.up(button="right")
    zoom = _zoom(pres)
    assert zoom != "1.00"
    eventually(lambda: _zoom(fol) == zoom, what="the follower's zoom")

    def width(b: tuple[float, float, float, float]) -> float:
        return b[2] - b[0]

    def scaled() -> bool:
        p_ratio = width(bright_box(canvas(pres))) / width(p_start)
        f_ratio = width(bright_box(canvas(fol))) / width(f_start)
        return abs(p_ratio - 1) > 0.1 and abs(f_ratio - p_ratio) < 0.05 * p_ratio

    eventually(scaled, what="the follower's phantom scaled like the presenter's")

    # Pan (middle drag): the phantom moves on the follower's canvas in proportion.
    p_before, f_before = bright_box(canvas(pres)), bright_box(canvas(fol))
    pres.mouse.move(px, py)
    pres.mouse.down(button="middle")
    pres.mouse.move(px + 60, py + 40, steps=8)
    pres.mouse.up(button="middle")

    def panned() -> bool:
        p_now, f_now = bright_box(canvas(pres)), bright_box(canvas(fol))
        k = width(f_now) / width(p_now)  # follower pixels per presenter pixel
        for axis in (0, 1):
            p_move = p_now[axis] - p_before[axis]
            f_move = f_now[axis] - f_before[axis]
            if abs(p_move) < 20 or abs(f_move - k * p_move) > 4:
                return False
        return True

    eventually(panned, what="the follower's phantom panned like the presenter's")

    # A measurement the presenter removes (select it, Delete) goes from the follower too.
    def lengths(page: Any) -> int:
        texts = page.locator(f"{pane()} svg text").all_text_contents()
        return len([t for t in texts if t.strip().endswith("mm")])

    pres.keyboard.press("l")
    pres.mouse.move(px - 50, py)
    pres.mouse.down()
    pres.mouse.move(px + 50, py, steps=6)
    pres.mouse.up()
    eventually(lambda: lengths(fol) == 1, what="the follower shows the length")
    pres.mouse.click(px, py)  # selects it
    pres.keyboard.press("Delete")
    eventually(lambda: lengths(pres) == 0, what="the presenter removed the length")
    eventually(lambda: lengths(fol) == 0, what="the follower's length removed")

    # Handover: the new presenter's wheel scrolls again; the old one's no longer does.
    pres.select_option("#mdt-handover-to", "ff")
    pres.click("#mdt-handover")
    fol.wait_for_selector(f"{pane()} .viewport:not(.following)")
    start = image_index(fol)
    fol.mouse.move(fx, fy)
    for _ in range(3):
        fol.mouse.wheel(0, 120)
        fol.wait_for_timeout(150)
    eventually(lambda: image_index(fol) != start, what="the new presenter's wheel scrolls")
    eventually(lambda: image_index(pres) == image_index(fol), what="the old presenter follows")
    assert not errors, errors
