"""Server CPU per WADO-RS `/frames` request, A/B against another source tree (issue 14).

    python -m bench frames [--slices 100] [--seconds 4] [--pairs 5] [--base-src DIR]
                           [--http-port 19100] [--profile DIR]

One data dir holds a ``--slices`` CT (imported once); `solent serve` is started on it in turn
from this tree and, with ``--base-src`` (e.g. ``git archive main src | tar -x -C /tmp/base``),
from that one (PYTHONPATH first), alternating which goes first. Each run: 8 threads ask random
single frames for ``--seconds`` after a 1 s warm-up; the server's CPU (utime+stime from /proc)
over the timed window divided by the frames served is the figure to compare on a shared
machine, frames/s the one that moves with others' load. ``--profile DIR`` attaches py-spy
(``--gil``, raw collapsed stacks, one file per run) to this tree's server in its timed window.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import compare_data
from bench import compare_phases as ph
from bench.solent_server import SolentServer

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rfind(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def one_run(
    server: SolentServer,
    env: dict[str, str],
    uids: compare_data.SeriesUIDs,
    seconds: float,
    profile: Path | None,
) -> tuple[float, float]:
    """(frames/s, server CPU ms per frame) of one server start on the shared data dir."""
    server.extra_env = env
    server.start()
    spy: subprocess.Popen[bytes] | None = None
    try:
        target = ph.Target(
            "Solent", server.dicomweb_url, server.ae_title, None, {server.pid}, server.headers()
        )
        sops = list(uids.sops)
        ph.frames_throughput(target, uids.study, uids.series, sops, duration=1.0)  # warm-up
        if profile is not None:
            out = profile / f"frames-{time.strftime('%H%M%S')}.txt"
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "-p",
                    str(server.pid),
                    "-f",
                    "raw",
                    "--gil",
                    "-o",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
        before = cpu_seconds(server.pid)
        rate, _median = ph.frames_throughput(
            target, uids.study, uids.series, sops, duration=seconds
        )
        used = cpu_seconds(server.pid) - before
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        server.stop(remove=False)
    return rate, 1000 * used / (rate * seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.frames_cpu", description=__doc__)
    p.add_argument("--slices", type=int, default=100)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--base-src", type=Path, help="the other tree's src/ (A/B)")
    p.add_argument("--http-port", type=int, default=0, help="0: the OS picks (DICOM +1, HL7 +2)")
    p.add_argument("--profile", type=Path, help="py-spy raw stacks of this tree's runs here")
    args = p.parse_args(argv)
    ports: dict[str, str] = {}
    if args.http_port:
        ports = {
            "SOLENT_HTTP_PORT": str(args.http_port),
            "SOLENT_DICOM_PORT": str(args.http_port + 1),
            "SOLENT_HL7_PORT": str(args.http_port + 2),
        }
    sides: list[tuple[str, dict[str, str]]] = [("branch", dict(ports))]
    if args.base_src:
        sides.append(("base", {**ports, "PYTHONPATH": str(args.base_src.resolve())}))
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-frames-"))
    server = SolentServer(compare_data.TRUST_NAMES, workdir=work, extra_env=dict(ports))
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in sides}
    try:
        server.prepare()
        series = compare_data.base_series(args.slices)
        uids = compare_data.series_uids(0, args.slices)
        out = server.cli("import", str(series), "--trust", compare_data.CT_TRUST, "--json")
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        for pair in range(args.pairs):
            order = sides if pair % 2 == 0 else sides[::-1]
            for name, env in order:
                prof = args.profile if name == "branch" else None
                rate, ms = one_run(server, env, uids, args.seconds, prof)
                results[name].append((rate, ms))
                print(f"pair {pair + 1} {name:>6}: {rate:7.1f} frames/s, {ms:5.3f} ms CPU/frame")
                sys.stdout.flush()
    finally:
        server.stop(remove=False)
        shutil.rmtree(work, ignore_errors=True)
    for name, runs in results.items():
        if runs:
            rate = statistics.median(r for r, _ in runs)
            ms = statistics.median(m for _, m in runs)
            print(f"median {name:>6}: {rate:7.1f} frames/s, {ms:5.3f} ms CPU/frame ({len(runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
