"""OHIF Viewer 3.x, unmodified from npm, on Solent's DICOMweb as a trust would run it (issue 15).

A real `solent serve` with the demo data; OHIF's prebuilt ``dist/`` behind a small proxy that
adds a ZZA clinician's bearer token; headless Debian chromium driven by Playwright. A ZZA
clinician sees DEMO^ALICE's ZZB MR in the study list, opens it, and the study panel lists all
her studies from both trusts (OHIF asks for "other studies" by the Patient ID it was shown);
the images render in the default (WADO-RS), WADO-URI and rendered / thumbnail modes.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer, require, start_server
from tests.interop.ohif_support import ViewerSite, ohif_dist, serve_viewer

CHROMIUM = "/usr/bin/chromium"
ALICE_ZZA = {"CT CHEST WITH CONTRAST", "XR CHEST PA"}
ALICE_ZZB = "MR BRAIN"
BOB_ZZB = "CT ABDOMEN PELVIS"  # no relationship with ZZA: never shown
WAIT_MS = 90_000

#: Share of the viewport canvas that must be brighter than black for an image to count as drawn
#: (the demo phantoms fill well over a tenth of it).
DRAWN = """() => {
  const c = document.querySelector('canvas.cornerstone-canvas');
  if (!c || !c.width) return 0;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let lit = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 30) lit++;
  return lit / (c.width * c.height);
}"""

#: Thumbnails of the study panel that arrived as images (rendered / thumbnail modes).
LOADED_THUMBNAILS = """() => Array.from(document.images)
  .filter(i => i.src.startsWith('blob:') || i.src.startsWith('data:image'))
  .filter(i => i.complete && i.naturalWidth > 0).length"""


@pytest.fixture(scope="module")
def solent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str]]:
    """`solent serve` with the demo data and a ZZA clinician's API token."""
    require(os.access(CHROMIUM, os.X_OK), f"chromium at {CHROMIUM}")
    require(importlib.util.find_spec("playwright") is not None, "the playwright package")
    ohif_dist()  # fetched before the server starts: a skip costs nothing
    data = tmp_path_factory.mktemp("ohif") / "var"
    srv = start_server(data, {"SOLENT_DEMO_DATA": "true"}, timeout=300)
    try:
        srv.cli("user", "add", "drza", "--trust", "ZZA", "--role", "clinician", "--no-password")
        token = srv.cli("token", "create", "--user", "drza", "--api").stdout.strip()
        yield srv, token.splitlines()[-1]
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def site(solent: tuple[RunningServer, str]) -> Iterator[ViewerSite]:
    srv, token = solent
    with serve_viewer(ViewerSite(ohif_dist(), srv.base_url, token)) as running:
        yield running


@pytest.fixture(scope="module")
def browser(site: ViewerSite, chromium_session: Any) -> Iterator[Any]:
    """The package's one chromium (tests/interop/conftest.py): a second Playwright started
    here found the first one's event loop running when this module ran after the viewer's."""
    yield chromium_session


@pytest.fixture
def page(browser: Any, site: ViewerSite) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def _study_uid(solent: tuple[RunningServer, str], description: str) -> str:
    srv, token = solent
    rows = httpx.get(
        f"{srv.base_url}/dicomweb/studies",
        params={"StudyDescription": description},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()
    assert len(rows) == 1, rows
    return str(rows[0]["0020000D"]["Value"][0])


def _open(page: Any, site: ViewerSite, study_uid: str) -> None:
    page.goto(f"{site.origin}/viewer?StudyInstanceUIDs={study_uid}")
    page.wait_for_function(f"({DRAWN})() > 0.1", timeout=WAIT_MS)


def _panel_lists_the_whole_history(page: Any) -> None:
    for description in (ALICE_ZZB, *ALICE_ZZA):
        page.get_by_text(description, exact=True).first.wait_for(timeout=WAIT_MS)
    assert BOB_ZZB not in page.inner_text("body")


def test_study_list_shows_the_callers_studies_and_linked_ones(page: Any, site: ViewerSite) -> None:
    page.goto(f"{site.origin}/")
    page.get_by_text(ALICE_ZZB, exact=True).wait_for(timeout=WAIT_MS)
    text = page.inner_text("body")
    assert {line.strip() for line in text.splitlines()} >= ALICE_ZZA
    assert "DEMO, ALICE" in text and "DEMO, ERIN" in text
    assert BOB_ZZB not in text and "DEMO, BOB" not in text


def test_a_linked_trusts_study_opens_with_the_whole_history_and_renders(
    page: Any, site: ViewerSite, solent: tuple[RunningServer, str]
) -> None:
    mr = _study_uid(solent, ALICE_ZZB)
    site.image_rendering, site.thumbnail_rendering = "wadors", "wadors"
    start = len(site.requests)
    _open(page, site, mr)
    _panel_lists_the_whole_history(page)
    asked = [path for path, *_ in site.requests[start:]]
    # OHIF asks for her other studies by the ID it was shown: ZZA's, though the MR is ZZB's.
    assert any("00100020=A100001" in p or "PatientID=A100001" in p for p in asked), asked
    assert all(status < 400 for _, status, _ in site.requests[start:])
    assert any("/frames/" in p for p in asked)


@pytest.mark.parametrize("thumbnails", ["rendered", "thumbnail"])
def test_wado_uri_images_and_rendered_thumbnails(
    page: Any, site: ViewerSite, solent: tuple[RunningServer, str], thumbnails: str
) -> None:
    mr = _study_uid(solent, ALICE_ZZB)
    site.image_rendering, site.thumbnail_rendering = "wadouri", thumbnails
    start = len(site.requests)
    try:
        _open(page, site, mr)
        _panel_lists_the_whole_history(page)
        page.wait_for_function(f"({LOADED_THUMBNAILS})() > 0", timeout=WAIT_MS)
    finally:
        site.image_rendering, site.thumbnail_rendering = "wadors", "wadors"
    seen = site.requests[start:]
    uri = [(p, s, t) for p, s, t in seen if p.startswith("/dicomweb/wado?")]
    assert uri and all(s == 200 and t == "application/dicom" for _, s, t in uri), uri[:3]
    assert all("transferSyntax=*" in p for p, _, _ in uri)
    images = [(p, s, t) for p, s, t in seen if f"/{thumbnails}" in p.split("?")[0]]
    assert images and all(s == 200 and t.startswith("image/") for _, s, t in images), images
    assert all(s < 400 for _, s, _ in seen), [r for r in seen if r[1] >= 400]


def test_the_callers_own_study_lists_the_linked_trusts_study_too(
    page: Any, site: ViewerSite, solent: tuple[RunningServer, str]
) -> None:
    """The reverse direction: OHIF keeps only answers with the Patient ID it asked for, so
    the ZZB MR must come back under ZZA's ID to appear beside her ZZA CT."""
    _open(page, site, _study_uid(solent, "CT CHEST WITH CONTRAST"))
    _panel_lists_the_whole_history(page)
