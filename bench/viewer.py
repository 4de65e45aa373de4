"""The browser viewer's speed (issue 12), side by side with OHIF 3.x on Orthanc: time to the
first image and to a fully loaded 100-slice CT series (512x512, 16-bit), in Debian chromium,
cold browser cache each run (a new browser context; one untimed warm-up load per viewer
first, so neither server is measured cold), on loopback and on an emulated trust link
(Chromium's own network emulation over the DevTools protocol, applied identically to both:
20 Mbit/s down and up, 40 ms RTT).

Both viewers are measured the same way, from outside the app (times from navigation start):

- first image: the first moment a visible <canvas> or <img> of at least 256x256 CSS pixels
  shows a non-blank picture (an init script draws each candidate into a 64x64 canvas every
  ~10 ms and asks for a standard deviation above 5 and a maximum above 40 of the grey levels,
  the same rule as the browser tests). For Solent that is its server-rendered first image
  (viewer/src/preview.ts) when it wins. The table's "first full-fidelity image" column is
  Solent's own mark for the first image Cornerstone drew from the frame's pixels (for OHIF,
  which shows no preview, the first image); its all-frames-decoded mark is printed per run.
- fully loaded: every frame of the series received by the browser: the last of the N distinct
  WADO-RS ``.../frames/k`` responses (HTTP 200) finished, by Playwright's request timing.

OHIF is @ohif/app's prebuilt dist from npm, unmodified (tests/interop/ohif_support.py), served
by a small same-origin Python site that proxies /dicomweb to Orthanc's DICOMweb plugin (an
extra hop Solent does not have; on loopback it costs OHIF a little). Orthanc runs as its Debian
package installs it (bench/orthanc.py) with the same series uploaded over its REST API.

    python -m bench viewer [--runs 2] [--slices 100] [--no-ohif]

Needs the built viewer (`make viewer`), /usr/bin/chromium, the `playwright` package and, for
the OHIF side, Orthanc + orthanc-dicomweb and npm (to fetch @ohif/app once).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.datasets import ct_series
from bench.solent_server import SolentServer

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAN = {"latency": 40, "downloadThroughput": 20e6 / 8, "uploadThroughput": 20e6 / 8}
LINKS: list[tuple[str, dict[str, float] | None]] = [
    ("loopback", None),
    ("20 Mbit/s, 40 ms RTT", WAN),
]
TIMEOUT_S = 180  # one run never takes longer than this
TRUSTS = {"ZZA": "Bench Trust A"}
FRAME = re.compile(r"/instances/[^/]+/frames/\d+$")

# Installed before any page script runs: records when a large visible canvas or image first
# holds a non-blank picture (see the module docstring); window.__benchFirst, ms from navigation.
DETECTOR = """
(() => {
  const probe = document.createElement('canvas');
  probe.width = probe.height = 64;
  const ctx = probe.getContext('2d', { willReadFrequently: true });
  const drawn = (el) => {
    try {
      ctx.fillStyle = '#000';
      ctx.fillRect(0, 0, 64, 64);
      ctx.drawImage(el, 0, 0, 64, 64);
    } catch (e) {
      return false;
    }
    const d = ctx.getImageData(0, 0, 64, 64).data;
    let sum = 0, sq = 0, max = 0;
    for (let i = 0; i < d.length; i += 4) {
      const g = (d[i] + d[i + 1] + d[i + 2]) / 3;
      sum += g; sq += g * g; if (g > max) max = g;
    }
    const n = d.length / 4, mean = sum / n;
    return Math.sqrt(Math.max(0, sq / n - mean * mean)) > 5 && max > 40;
  };
  const check = () => {
    for (const el of document.querySelectorAll('canvas, img')) {
      const r = el.getBoundingClientRect();
      if (r.width < 256 || r.height < 256) continue;
      if (el.tagName === 'IMG' && !(el.complete && el.naturalWidth)) continue;
      if (drawn(el)) { window.__benchFirst = performance.now(); return; }
    }
    setTimeout(check, 10);
  };
  setTimeout(check, 0);
})();
"""


@dataclass
class Run:
    first: float  # s
    full: float  # s
    extra: dict[str, float] = field(default_factory=dict)  # the app's own marks, s

    @property
    def fidelity(self) -> float:
        """First image drawn from the frame's own pixels: Solent's mark after its server-rendered
        preview; for a viewer without marks (OHIF) its first image is already that."""
        return self.extra.get("solent:first-image:Current", self.first)


def study_uid(folder: Path) -> str:
    import pydicom

    first = next(p for p in sorted(folder.rglob("*.dcm")) if p.is_file())
    return str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def one_run(
    browser: Any,
    url: str,
    link: dict[str, float] | None,
    frames: int,
    init: str = "",
    marks: tuple[str, ...] = (),
) -> Run:
    """One cold load of ``url``: first image (detector) and the last of ``frames`` frames."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        context.add_init_script(DETECTOR + init)
        page = context.new_page()
        if link is not None:
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            cdp.send("Network.emulateNetworkConditions", {"offline": False, **link})
        ok: set[str] = set()
        received: dict[str, float] = {}  # frame URL -> epoch ms of its last byte

        def on_response(response: Any) -> None:
            if response.status == 200:
                ok.add(response.url)

        def on_finished(request: Any) -> None:
            path = request.url.split("?")[0]
            if FRAME.search(path) and request.url in ok:
                t = request.timing
                received[path] = t["startTime"] + t["responseEnd"]

        page.on("response", on_response)
        page.on("requestfinished", on_finished)
        page.goto(url)
        deadline = time.monotonic() + TIMEOUT_S
        first = None
        while first is None or len(received) < frames:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{url}: first image {first}, {len(received)}/{frames} frames "
                    f"after {TIMEOUT_S} s"
                )
            page.wait_for_timeout(100)
            if first is None:
                first = page.evaluate("window.__benchFirst ?? null")
        origin = page.evaluate("performance.timeOrigin")
        extra = {}
        marks_by = min(deadline, time.monotonic() + 30)
        for name in marks:
            # Frames may all be received before the last is decoded: give the marks a moment.
            while time.monotonic() < marks_by and not page.evaluate(
                "(n) => performance.getEntriesByName(n).length", name
            ):
                page.wait_for_timeout(50)
            t = page.evaluate("(n) => performance.getEntriesByName(n)[0]?.startTime ?? null", name)
            if t is not None:
                extra[name] = t / 1000
        return Run(first / 1000, (max(received.values()) - origin) / 1000, extra)
    finally:
        context.close()


@contextmanager
def solent_viewer(folder: Path, token_out: list[str]) -> Iterator[str]:
    with SolentServer(trusts=TRUSTS) as solent:
        started = time.monotonic()
        solent.cli("import", str(folder), "--trust", "ZZA")
        print(f"  Solent: imported in {time.monotonic() - started:.1f} s", flush=True)
        token_out.append(solent.token)
        yield solent.base_url


@contextmanager
def ohif_on_orthanc(folder: Path) -> Iterator[str]:
    """OHIF's dist served with /dicomweb proxied to a fresh Orthanc holding ``folder``."""
    from tests.interop.ohif_support import ViewerSite, ohif_dist, serve_viewer

    from bench.orthanc import OrthancServer

    dist = ohif_dist()
    with OrthancServer() as orthanc:
        started = time.monotonic()
        for path in sorted(folder.glob("*.dcm")):
            req = urllib.request.Request(
                orthanc.base_url + "/instances",
                data=path.read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()
        print(f"  Orthanc: uploaded in {time.monotonic() - started:.1f} s", flush=True)
        site = ViewerSite(dist, orthanc.base_url, "", upstream_root="/dicom-web")
        with serve_viewer(site) as running:
            yield running.origin


SOLENT_MARKS = (
    "solent:preview-image:Current",
    "solent:first-image:Current",
    "solent:series-loaded:Current",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench viewer", description=__doc__)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--no-ohif", action="store_true", help="measure Solent only")
    args = parser.parse_args(argv)
    dist = Path(__file__).resolve().parents[1] / "src" / "solent" / "viewer_dist" / "index.html"
    if not dist.is_file():
        print("the viewer is not built: run `make viewer`", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    folder = ct_series(slices=args.slices)
    uid = study_uid(folder)
    print(f"viewer benchmark: {args.slices}-slice CT 512x512, {args.runs} cold runs per cell")
    rows: list[tuple[str, str, float, float, float]] = []
    with ExitStack() as stack:
        token: list[str] = []
        solent = stack.enter_context(solent_viewer(folder, token))
        # (viewer, page URL, init script, marks to read)
        viewers: list[tuple[str, str, str, tuple[str, ...]]] = [
            (
                "Solent",
                f"{solent}/viewer/#/study/{uid}?prior=",
                f"sessionStorage.setItem('solent.token', {token[0]!r});",
                SOLENT_MARKS,
            )
        ]
        if not args.no_ohif:
            ohif = stack.enter_context(ohif_on_orthanc(folder))
            viewers.append(
                ("OHIF 3.x on Orthanc", f"{ohif}/viewer?StudyInstanceUIDs={uid}", "", ())
            )
        p = stack.enter_context(sync_playwright())
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        stack.callback(browser.close)
        # One untimed load per viewer first: both servers warm (imports, caches of the
        # archive), every timed run still starts from a cold browser context.
        for _, url, init, marks in viewers:
            one_run(browser, url, None, args.slices, init, marks)
        for link_name, link in LINKS:
            for viewer, url, init, marks in viewers:
                runs = []
                for i in range(args.runs):
                    r = one_run(browser, url, link, args.slices, init, marks)
                    own = ", ".join(f"{k.split(':')[1]} {v:.2f} s" for k, v in r.extra.items())
                    print(
                        f"  {viewer:<20} {link_name:<21} run {i + 1}: first image "
                        f"{r.first:.2f} s, full series {r.full:.2f} s"
                        + (f" (own marks: {own})" if own else ""),
                        flush=True,
                    )
                    runs.append(r)
                rows.append(
                    (
                        viewer,
                        link_name,
                        statistics.median(r.first for r in runs),
                        statistics.median(r.fidelity for r in runs),
                        statistics.median(r.full for r in runs),
                    )
                )
    print(
        f"\n| viewer | link | first image (s) | first full-fidelity image (s) "
        f"| full {args.slices}-slice series (s) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for viewer, link_name, first, fidelity, full in rows:
        print(f"| {viewer} | {link_name} | {first:.2f} | {fidelity:.2f} | {full:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
