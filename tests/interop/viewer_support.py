"""Browser helpers for the viewer's end-to-end tests: Debian chromium through Playwright, canvas
pixels read back from the page, screenshots kept under the test's output directory."""

from __future__ import annotations

import base64
import io
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.conftest import RunningServer, require

CHROMIUM = Path("/usr/bin/chromium")
DIST = Path(__file__).resolve().parents[2] / "src" / "solent" / "viewer_dist"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery staple"


def require_browser() -> None:
    require(CHROMIUM.is_file(), f"chromium at {CHROMIUM}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        require(False, "the Python `playwright` package")
    require((DIST / "index.html").is_file(), "the built viewer (run `make viewer`)")


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def add_user(
    srv: RunningServer, name: str, trust: str, *roles: str, also: tuple[str, ...] = ()
) -> dict[str, str]:
    args = ["user", "add", name, "--trust", trust, "--password", PASSWORD]
    for role in roles:
        args += ["--role", role]
    for other in also:
        args += ["--also-trust", other]
    srv.cli(*args)
    token = srv.cli("token", "create", "--user", name).stdout.strip().splitlines()[-1]
    return {"Authorization": f"Bearer {token}"}


def new_page(
    browser: Any, srv: RunningServer, errors: list[str], size: tuple[int, int] = (1400, 900)
) -> Any:
    context = browser.new_context(viewport={"width": size[0], "height": size[1]})
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(60_000)
    page.goto(srv.base_url + "/viewer/")
    return page


def sign_in(page: Any, name: str) -> None:
    page.fill("#sign-in input[name=username]", name)
    page.fill("#sign-in input[name=password]", PASSWORD)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#search")
    page.wait_for_selector(f"#who:has-text('{name}')")


def pane(label: str = "Current") -> str:
    return f".pane[data-pane='{label}']"


def canvas(page: Any, label: str = "Current") -> np.ndarray:
    """The viewport canvas's pixels (RGB), as drawn; overlays (HTML) are not part of it."""
    data = page.evaluate(
        "(sel) => document.querySelector(sel + ' canvas').toDataURL('image/png')", pane(label)
    )
    png = base64.b64decode(data.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def shown(page: Any, label: str = "Current") -> np.ndarray:
    """The pane's viewport as on screen (RGB): the canvas with what is drawn over it (the
    measurements' SVG layer, the MDT pointer)."""
    png = page.locator(f"{pane(label)} .viewport").screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def canvas_box(page: Any, label: str = "Current") -> dict[str, float]:
    """Where the pane's canvas is on the page (CSS px) and its device pixels per CSS px."""
    box: dict[str, float] = page.evaluate(
        """(sel) => { const c = document.querySelector(sel + ' canvas');
        const r = c.getBoundingClientRect();
        const scale = c.width / r.width;
        return {x: r.left, y: r.top, width: r.width, height: r.height, scale}; }""",
        pane(label),
    )
    return box


def bright_box(pixels: np.ndarray, level: int = 60) -> tuple[float, float, float, float]:
    """The bounding box (x0, y0, x1, y1, canvas pixels) of what is brighter than ``level``:
    the phantom's body, an anatomical landmark to compare two windows by."""
    mask = pixels.max(axis=2) > level
    ys, xs = np.nonzero(mask)
    if not len(xs):
        raise AssertionError("nothing bright on the canvas")
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def canvas_fits_its_pane(page: Any, label: str = "Current") -> bool:
    """The viewport canvas has as many pixels as it is shown with: one enabled before the page
    around it settled, and never resized, is squeezed by the browser (anatomy out of
    proportion)."""
    w, h, cw, ch = page.evaluate(
        "(sel) => { const c = document.querySelector(sel + ' canvas'); const r = devicePixelRatio;"
        " return [c.width, c.height, c.clientWidth * r, c.clientHeight * r]; }",
        pane(label),
    )
    return abs(w - cw) <= 1 and abs(h - ch) <= 1


def not_blank(pixels: np.ndarray) -> bool:
    return float(pixels.std()) > 5.0 and int(pixels.max()) > 40


def differs(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels that changed noticeably."""
    if a.shape != b.shape:
        return 1.0
    return float((np.abs(a - b).max(axis=2) > 8).mean())


def eventually(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def wait_image(page: Any, label: str = "Current") -> np.ndarray:
    """Waits until the pane shows a rendered, non-blank image and returns its pixels."""
    page.wait_for_selector(f"{pane(label)} .overlay .bl:has-text('Im ')")
    holder: list[np.ndarray] = []

    def drawn() -> bool:
        px = canvas(page, label)
        holder[:] = [px]
        return not_blank(px)

    eventually(drawn, what=f"an image in the {label} pane")
    return holder[0]


def settled(page: Any, label: str = "Current", timeout: float = 30.0) -> np.ndarray:
    """The canvas once it stops changing (two reads 0.5 s apart agree): a later frame of
    higher fidelity, or a resize as the page around it fills in, no longer pending."""
    before = wait_image(page, label)
    deadline = time.monotonic() + timeout
    while True:
        page.wait_for_timeout(500)
        now = canvas(page, label)
        if differs(before, now) < 0.001 or time.monotonic() > deadline:
            return now
        before = now


def image_index(page: Any, label: str = "Current") -> int:
    return int(page.get_attribute(f"{pane(label)} .overlay", "data-index") or -1)


def shot(page: Any, out: Path, name: str) -> Path:
    """A named screenshot in the test's output dir; also in $SOLENT_DOCS_SCREENSHOTS when set
    (how docs/img/viewer-*.png are made)."""
    path = out / f"{name}.png"
    page.screenshot(path=str(path))
    docs = os.environ.get("SOLENT_DOCS_SCREENSHOTS")
    if docs:
        shutil.copyfile(path, Path(docs) / f"viewer-{name}.png")
    return path
