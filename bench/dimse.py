"""DIMSE throughput: C-STORE ingest with storescu (1 association, 4 in parallel) of a 300-slice
512x512 CT series, and C-GET of the series with getscu; Solent and Orthanc in the same run.

    .venv/bin/python -m bench.dimse [--slices 300] [--no-orthanc] [--orthanc-first] [--profile DIR]
                                    [--dicom-engine fast|pynetdicom] [--dicom-workers N]

Every DCMTK tool runs with TCP_NODELAY=1. Each store run sends a series with new UIDs, so no
run is answered from a duplicate check. Prints instances/s and Solent/Orthanc ratios, and the
server's CPU time per instance (its processes and their children, from /proc): on a shared
machine that figure moves much less than instances/s.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.compare_data import write_variant
from bench.orthanc import ORTHANC_AET, OrthancServer
from bench.solent_server import SolentServer

ENV = {**os.environ, "TCP_NODELAY": "1"}
CLIENT = "BENCH"


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (DIMSE worker processes)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def cpu_seconds(pid: int, *, kernel_only: bool = False) -> float:
    """User + system (or only system) CPU of a process tree so far (Linux /proc; 0 elsewhere)."""
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[12]) if kernel_only else int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def clients_cpu_seconds() -> float:
    """User + system CPU of the DCMTK tools run so far (children that were waited for)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores, kernel threads included)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def storescu(port: int, aec: str, files: list[Path]) -> None:
    result = subprocess.run(
        ["storescu", "-aet", CLIENT, "-aec", aec, "127.0.0.1", str(port), *map(str, files)],
        env=ENV,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr[-500:]}")


def timed_store(port: int, aec: str, files: list[Path], parallel: int) -> float:
    """Instances per second sending ``files`` over ``parallel`` concurrent associations."""
    chunks = [files[i::parallel] for i in range(parallel)]
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda c: storescu(port, aec, c), chunks))
    return len(files) / (time.perf_counter() - started)


def timed_get(port: int, aec: str, study: str, series: str, expected: int, work: Path) -> float:
    out = work / f"get-{aec}-{time.monotonic_ns()}"
    out.mkdir()
    started = time.perf_counter()
    result = subprocess.run(
        [
            "getscu",
            "-S",
            "-aet",
            CLIENT,
            "-aec",
            aec,
            "-od",
            str(out),
            "127.0.0.1",
            str(port),
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={study}",
            "-k",
            f"SeriesInstanceUID={series}",
        ],
        env=ENV,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    got = len(list(out.iterdir()))
    shutil.rmtree(out, ignore_errors=True)
    if result.returncode != 0 or got != expected:
        raise RuntimeError(f"getscu from {aec}: {got}/{expected} files; {result.stderr[-400:]}")
    return expected / elapsed


def run_peer(
    name: str,
    port: int,
    aec: str,
    work: Path,
    slices: int,
    variant: Callable[[int], tuple[Path, str, str]],
    pid: int | None = None,
) -> dict[str, float]:
    cpu: list[float] = []
    kernel: list[float] = []
    clients: list[float] = []
    machine: list[float] = []

    def lap() -> None:
        if pid is not None:
            cpu.append(cpu_seconds(pid))
            kernel.append(cpu_seconds(pid, kernel_only=True))
        clients.append(clients_cpu_seconds())
        machine.append(machine_busy_seconds())

    one_dir, study, series = variant(1)
    four_dir, _, _ = variant(2)
    lap()
    one = timed_store(port, aec, sorted(one_dir.iterdir()), 1)
    lap()
    four = timed_store(port, aec, sorted(four_dir.iterdir()), 4)
    lap()
    get = timed_get(port, aec, study, series, slices, work)
    lap()
    print(f"{name:8s} C-STORE 1 assoc {one:7.1f}/s   4 assoc {four:7.1f}/s   C-GET {get:7.1f}/s")
    # The DCMTK clients share the machine's cores with the server: what they and the kernel's
    # own threads use is CPU the server cannot have (the ceiling on instances/s).
    shares = ("server", cpu), ("server kernel", kernel), ("clients", clients), ("machine", machine)
    for label, laps in shares:
        if len(laps) != 4:
            continue
        ms = [1000 * (b - a) / slices for a, b in itertools.pairwise(laps)]
        print(
            f"{'':8s} {label} CPU ms/instance: store 1 assoc {ms[0]:.2f}   4 assoc {ms[1]:.2f}"
            f"   C-GET {ms[2]:.2f}"
        )
    return {"store1": one, "store4": four, "get": get}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--no-orthanc", action="store_true")
    p.add_argument(
        "--orthanc-first",
        action="store_true",
        help="measure Orthanc before Solent (the first archive of a run on a freshly booted VM "
        "pays for page-cache pages the host has not backed yet)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        help="record Solent (and its DIMSE workers) with py-spy into DIR/dimse.txt",
    )
    p.add_argument(
        "--dicom-engine",
        choices=("fast", "pynetdicom"),
        help="Solent's DICOM upper layer (SOLENT_DICOM_ENGINE; default: Solent's default)",
    )
    p.add_argument(
        "--dicom-workers",
        type=int,
        help="Solent's receiving processes (SOLENT_DICOM_WORKERS; default: one per CPU)",
    )
    args = p.parse_args()
    engine = {"SOLENT_DICOM_ENGINE": args.dicom_engine} if args.dicom_engine else {}
    if args.dicom_workers:
        engine["SOLENT_DICOM_WORKERS"] = str(args.dicom_workers)
    work = Path(tempfile.mkdtemp(prefix="bench-dimse-"))
    made: dict[int, tuple[Path, str, str]] = {}

    def variant(v: int) -> tuple[Path, str, str]:
        if v not in made:
            uids = write_variant(v + 100, work / f"v{v}", slices=args.slices)
            made[v] = (work / f"v{v}", uids.study, uids.series)
        return made[v]

    print(
        f"{args.slices} CT slices 512x512 (~{args.slices * 0.5:.0f} MB), TCP_NODELAY=1, "
        f"Solent DICOM engine: {args.dicom_engine or 'default'}"
    )

    def run_solent() -> dict[str, float]:
        with SolentServer(trusts={"ZZA": "Trust A"}, client_aet=CLIENT, extra_env=engine) as solent:
            port = solent.dicom_port
            assert port is not None
            recording = None
            if args.profile is not None:
                from bench.pyspy import Recording, summarise

                args.profile.mkdir(parents=True, exist_ok=True)
                recording = Recording(solent.pid, args.profile / "dimse.txt")
            try:
                return run_peer(
                    "Solent", port, solent.ae_title, work, args.slices, variant, solent.pid
                )
            finally:
                if recording is not None:
                    raw = recording.stop()
                    top = summarise(raw)
                    (args.profile / "dimse.top.txt").write_text(top, encoding="utf-8")

    def run_orthanc() -> dict[str, float]:
        with OrthancServer(client_aet=CLIENT) as orthanc:
            return run_peer(
                "Orthanc",
                orthanc.dicom_port,
                ORTHANC_AET,
                work,
                args.slices,
                variant,
                orthanc.pid,
            )

    with_orthanc = not args.no_orthanc and shutil.which("Orthanc") is not None
    try:
        if args.orthanc_first and with_orthanc:
            theirs = run_orthanc()
            mine = run_solent()
        else:
            mine = run_solent()
            if not with_orthanc:
                return
            theirs = run_orthanc()
        print(
            "Solent/Orthanc  "
            + "   ".join(f"{k} x{mine[k] / theirs[k]:.2f}" for k in ("store1", "store4", "get"))
        )
        # What the 1.5x target of four associations asks of the machine: both archives share
        # its cores with the storescu processes, so at saturation the rate is cores / machine
        # CPU per instance.
        target = 1.5 * theirs["store4"]
        print(
            f"1.5x Orthanc with 4 associations = {target:.0f} inst/s: at most "
            f"{1000 * (os.cpu_count() or 1) / target:.2f} ms of machine CPU per instance "
            f"(this machine has {os.cpu_count()} cores)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
