"""DICOMweb figures on a 300-slice CT series, Solent and Orthanc (DICOMweb plugin) in one run.

    python -m bench.dicomweb [--slices 300] [--size 512] [--seconds 5] [--no-orthanc]

Measures: series /metadata latency (median, with and without gzip), WADO-RS series retrieval
(MB/s and time to first byte), /frames single-frame requests per second with 8 concurrent
clients (the viewer's pattern), thumbnail / rendered latency, QIDO /studies latency. Prints
a table with Solent/Orthanc ratios. Not run by the tests; figures go in the report.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from bench.compare_data import TRUST_NAMES, base_series, series_uids
from bench.orthanc import OrthancServer
from bench.solent_server import SolentServer

ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAME_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median milliseconds of ``repeat`` calls (after one warm-up)."""
    fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def get_ok(session: requests.Session, url: str, headers: dict[str, str]) -> bytes:
    r = session.get(url, headers=headers, timeout=120)
    r.raise_for_status()
    return r.content


def retrieval(session: requests.Session, url: str, headers: dict[str, str]) -> tuple[float, float]:
    """(MB/s, time to first byte in ms) of one streamed WADO-RS series retrieval."""
    t0 = time.perf_counter()
    with session.get(url, headers={**headers, "Accept": ANY_SYNTAX}, stream=True, timeout=300) as r:
        r.raise_for_status()
        first = None
        total = 0
        for chunk in r.iter_content(1 << 20):
            if first is None:
                first = time.perf_counter()
            total += len(chunk)
    elapsed = time.perf_counter() - t0
    return total / elapsed / 1e6, ((first or t0) - t0) * 1000


def frames_per_second(
    base: str,
    study: str,
    series: str,
    sops: tuple[str, ...],
    headers: dict[str, str],
    seconds: float,
    clients: int = 8,
) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * clients
    errors: list[str] = []

    def worker(k: int) -> None:
        session = requests.Session()
        rnd = random.Random(k)
        while time.monotonic() < stop:
            sop = rnd.choice(sops)
            url = f"{base}/studies/{study}/series/{series}/instances/{sop}/frames/1"
            r = session.get(url, headers={**headers, "Accept": FRAME_ANY}, timeout=60)
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:100]}")
                return
            counts[k] += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("frame requests failed: " + errors[0])
    return sum(counts) / (time.perf_counter() - t0)


def measure(
    name: str, base: str, headers: dict[str, str], slices: int, seconds: float
) -> dict[str, float]:
    uids = series_uids(0, slices)
    s = requests.Session()
    out: dict[str, float] = {}
    series_url = f"{base}/studies/{uids.study}/series/{uids.series}"
    plain = {**headers, "Accept-Encoding": "identity", "Accept": "application/dicom+json"}
    gz = {**headers, "Accept-Encoding": "gzip", "Accept": "application/dicom+json"}
    docs = requests.get(series_url + "/metadata", headers=plain, timeout=120).json()
    assert len(docs) == slices, f"{name}: {len(docs)} metadata documents"
    out["series metadata (ms)"] = timed(lambda: get_ok(s, series_url + "/metadata", plain), 20)
    out["series metadata gzip (ms)"] = timed(lambda: get_ok(s, series_url + "/metadata", gz), 20)
    out["QIDO /studies (ms)"] = timed(
        lambda: get_ok(
            s, f"{base}/studies?limit=100", {**headers, "Accept": "application/dicom+json"}
        ),
        20,
    )
    runs = [retrieval(s, series_url, headers) for _ in range(3)]
    out["WADO-RS series (MB/s)"] = statistics.median(r[0] for r in runs)
    out["WADO-RS time to first byte (ms)"] = statistics.median(r[1] for r in runs)
    out["frames/s, 8 clients"] = frames_per_second(
        base, uids.study, uids.series, uids.sops, headers, seconds
    )
    mid = uids.sops[slices // 2]
    inst = f"{series_url}/instances/{mid}"
    out["rendered JPEG (ms)"] = timed(
        lambda: get_ok(s, inst + "/rendered", {**headers, "Accept": "image/jpeg"}), 10
    )
    with contextlib.suppress(requests.HTTPError):  # Orthanc's plugin has no /thumbnail
        out["thumbnail (ms)"] = timed(
            lambda: get_ok(s, inst + "/thumbnail", {**headers, "Accept": "image/jpeg"}), 10
        )
    return out


def load_orthanc(orthanc: OrthancServer, folder: Path) -> None:
    s = requests.Session()
    files = sorted(folder.glob("*.dcm"))

    def post(path: Path) -> None:
        s.post(
            orthanc.base_url + "/instances", data=path.read_bytes(), timeout=120
        ).raise_for_status()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(post, files))


NODELAY_LAUNCHER = """#!{python}
# Bench-only: `solent` with TCP_NODELAY on every accepted HTTP connection (see --nodelay).
import socket
import sys

from uvicorn.protocols.http.h11_impl import H11Protocol

_made = H11Protocol.connection_made


def connection_made(self, transport):
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _made(self, transport)


H11Protocol.connection_made = connection_made
from solent.cli import main  # noqa: E402

sys.exit(main())
"""


def use_nodelay_launcher() -> None:
    """Start Solent through a launcher that disables Nagle on HTTP connections.

    Without it, on a keep-alive connection every response whose headers and body leave in
    two writes waits for the client's delayed ACK: about 40 ms per request on Linux.
    """
    import bench.solent_server as solent_server

    path = Path(tempfile.mkdtemp(prefix="bench-nodelay-")) / "solent"
    path.write_text(NODELAY_LAUNCHER.format(python=sys.executable), encoding="utf-8")
    path.chmod(0o755)
    solent_server.SOLENT = path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--no-orthanc", action="store_true")
    ap.add_argument(
        "--nodelay",
        action="store_true",
        help="run Solent with TCP_NODELAY on HTTP connections (what serve.py should do)",
    )
    args = ap.parse_args(argv)
    if args.nodelay:
        use_nodelay_launcher()
    folder = base_series(args.slices, args.size)
    results: dict[str, dict[str, float]] = {}
    with SolentServer(trusts=TRUST_NAMES) as solent:
        solent.cli("import", str(folder), "--trust", "ZZA")
        results["Solent"] = measure(
            "Solent", solent.dicomweb_url, solent.headers(), args.slices, args.seconds
        )
    if not args.no_orthanc:
        orthanc = OrthancServer().start()
        try:
            load_orthanc(orthanc, folder)
            results["Orthanc"] = measure(
                "Orthanc", orthanc.dicomweb_url.rstrip("/"), {}, args.slices, args.seconds
            )
        finally:
            orthanc.stop()
    size_mb = sum(p.stat().st_size for p in folder.glob("*.dcm")) / 1e6
    print(f"\nDICOMweb, {args.slices}-slice CT series {args.size}x{args.size} ({size_mb:.0f} MB)")
    names = list(results)
    print(
        f"{'measure':<34}"
        + "".join(f"{n:>12}" for n in names)
        + ("  Solent/Orthanc" if len(names) == 2 else "")
    )
    for key in results["Solent"]:
        row = f"{key:<34}" + "".join(f"{results[n].get(key, float('nan')):>12.1f}" for n in names)
        if len(names) == 2 and key in results["Orthanc"] and results["Orthanc"][key]:
            row += f"  {results['Solent'][key] / results['Orthanc'][key]:>10.2f}"
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
