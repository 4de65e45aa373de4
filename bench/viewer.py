"""The browser viewer's speed (issue 12): time to the first image and to a fully loaded 100-slice
CT series (512x512, 16-bit), in Debian chromium, cold cache each run, on loopback and on an
emulated trust link (Chromium's own network emulation over the DevTools protocol: 20 Mbit/s
down and up, 40 ms RTT). Figures come from the app's own performance marks
(solent:first-image, solent:series-loaded), measured from navigation start.

    python -m bench viewer [--runs 3] [--slices 100]

Needs the built viewer (`make viewer`), /usr/bin/chromium and the `playwright` package.
OHIF 3.x on Orthanc side by side is not in this run yet (see docs/viewer.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
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
# (row name, network emulation or None, query string of the viewer page)
LINKS: list[tuple[str, dict[str, float] | None, str]] = [
    ("loopback", None, ""),
    ("20 Mbit/s, 40 ms RTT", WAN, ""),
]
TIMEOUT_S = 180  # one run never takes longer than this
TRUSTS = {"ZZA": "Bench Trust A"}


def study_uid(folder: Path) -> str:
    import pydicom

    first = next(p for p in sorted(folder.rglob("*.dcm")) if p.is_file())
    return str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def one_run(
    browser: Any, base: str, token: str, uid: str, link: dict[str, float] | None, query: str
) -> dict[str, float]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        context.add_init_script(f"sessionStorage.setItem('solent.token', {token!r})")
        page = context.new_page()
        if link is not None:
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            cdp.send("Network.emulateNetworkConditions", {"offline": False, **link})
        page.goto(f"{base}/viewer/{query}#/study/{uid}?prior=")
        page.wait_for_function(
            "performance.getEntriesByName('solent:series-loaded:Current').length > 0",
            timeout=TIMEOUT_S * 1000,
        )
        marks = page.evaluate(
            "['first-image', 'series-loaded'].map(n => "
            "performance.getEntriesByName('solent:' + n + ':Current')[0].startTime)"
        )
        return {"first": marks[0] / 1000, "full": marks[1] / 1000}
    finally:
        context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench viewer", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slices", type=int, default=100)
    args = parser.parse_args(argv)
    dist = Path(__file__).resolve().parents[1] / "src" / "solent" / "viewer_dist" / "index.html"
    if not dist.is_file():
        print("the viewer is not built: run `make viewer`", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    folder = ct_series(slices=args.slices)
    uid = study_uid(folder)
    print(f"viewer benchmark: {args.slices}-slice CT 512x512, {args.runs} cold runs per link")
    with SolentServer(trusts=TRUSTS) as solent:
        started = time.monotonic()
        solent.cli("import", str(folder), "--trust", "ZZA")
        print(f"  imported in {time.monotonic() - started:.1f} s")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                rows = []
                for name, link, query in LINKS:
                    runs = []
                    for i in range(args.runs):
                        r = one_run(browser, solent.base_url, solent.token, uid, link, query)
                        print(
                            f"  {name:<22} run {i + 1}: first {r['first']:.2f} s, "
                            f"full {r['full']:.2f} s",
                            flush=True,
                        )
                        runs.append(r)
                    rows.append(
                        (
                            name,
                            statistics.median(r["first"] for r in runs),
                            statistics.median(r["full"] for r in runs),
                        )
                    )
            finally:
                browser.close()
    print(f"\n| link | Solent first image (s) | Solent full {args.slices}-slice series (s) |")
    print("| --- | --- | --- |")
    for name, first, full in rows:
        print(f"| {name} | {first:.2f} | {full:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
