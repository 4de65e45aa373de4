"""Migration throughput: `solent migrate run` from an Orthanc source (C-FIND + C-GET into the
archive, fsynced) against Orthanc's own C-MOVE of the same studies to a plain DCMTK `storescp`
(files written, no index, no fsync) in the same run; then the projected time for the seed's
volume (1.3 M exams a year for 8 years) on one node and on N nodes.

    .venv/bin/python -m bench migration [--studies 8] [--series 2] [--instances 20]
        [--size 256] [--associations 2] [--nodes 4] [--instances-per-exam 150]
        [--mb-per-exam 60]

The projection is arithmetic on the measured rates, with the exam profile given on the command
line (printed with the result): instances/s and MB/s each give a time, and the longer one is
reported. N nodes assumes each node migrates a disjoint share of the sources at the measured
rate, which holds only while the legacy systems and the shared index keep up; it is an upper
bound on speed, not a promise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.migration_data import Patient, Study, upload_study
from bench.orthanc import ORTHANC_AET, OrthancServer, free_port
from solent.serve_process import serve_env, solent_program

CALLING = "BENCHMIG"
EXAMS = 1_300_000 * 8


def _solent(env: dict[str, str], *args: str) -> str:
    r = subprocess.run(
        [str(solent_program()), *args], env=env, capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        raise RuntimeError(f"solent {' '.join(args)} failed: {r.stderr[-2000:]}")
    return r.stdout


def _folder_stats(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _projection(label: str, per_s: float, mb_s: float, args: argparse.Namespace) -> None:
    if per_s <= 0 or mb_s <= 0:
        print(f"  {label}: no rate measured")
        return
    seconds = max(EXAMS * args.instances_per_exam / per_s, EXAMS * args.mb_per_exam / mb_s)
    days = seconds / 86400
    print(
        f"  {label}: {days:,.0f} days on 1 node, {days / args.nodes:,.0f} days on "
        f"{args.nodes} nodes ({days / 365:.1f} / {days / 365 / args.nodes:.1f} years)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench migration", description=__doc__)
    p.add_argument("--studies", type=int, default=8)
    p.add_argument("--series", type=int, default=2)
    p.add_argument("--instances", type=int, default=20, help="instances per series")
    p.add_argument("--size", type=int, default=256, help="rows = columns of each image")
    p.add_argument("--associations", type=int, default=2)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--instances-per-exam", type=float, default=150.0)
    p.add_argument("--mb-per-exam", type=float, default=60.0)
    args = p.parse_args(argv)
    if shutil.which("Orthanc") is None or shutil.which("storescp") is None:
        print("needs Orthanc and DCMTK (storescp): apt-get install orthanc dcmtk")
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-migration-"))
    scp_port = free_port()
    scp_dir = work / "storescp"
    scp_dir.mkdir()
    env = {**os.environ, "TCP_NODELAY": "1"}
    try:
        with OrthancServer(client_aet=CALLING, client_port=scp_port, workdir=work / "orthanc") as o:
            studies = []
            total = args.studies * args.series * args.instances
            print(f"filling Orthanc with {total} instances of {args.size}x{args.size} (untimed)")
            for i in range(args.studies):
                study = Study(Patient(f"BM{i:04d}", "BENCH^MIG", "19700101", "O"), "20200101")
                for _ in range(args.series):
                    study.add_series(args.instances)
                upload_study(o.base_url, study, size=args.size)
                studies.append(study)
                print(f"  {i + 1}/{args.studies} studies", end="\r", flush=True)
            print()

            # 1. Solent: inventory, reconcile, transfer, all through ingest (fsynced, indexed).
            senv = serve_env(work / "solent", {"SOLENT_LOG_LEVEL": "WARNING", "TCP_NODELAY": "1"})
            _solent(senv, "trust", "add", "ZZA", "--name", "Bench trust")
            _solent(
                senv, "migrate", "source", "add", "orthanc",
                "--dimse", f"{ORTHANC_AET}@127.0.0.1:{o.dicom_port}", "--trust", "ZZA",
                "--calling-ae", CALLING, "--associations", str(args.associations),
            )  # fmt: skip
            started = time.perf_counter()
            out = _solent(senv, "migrate", "run", "orthanc", "--json")
            wall = time.perf_counter() - started
            summary = json.loads(out.strip().splitlines()[-1])["summary"]
            moved = summary["transfer"]
            mb = moved["bytes"] / 1e6
            print(
                f"solent migrate run: {moved['done']} instances, {mb:.1f} MB in {wall:.2f} s "
                f"wall (inventory + reconcile + transfer, incl. program start) = "
                f"{moved['done'] / wall:.1f} instances/s, {mb / wall:.2f} MB/s; transfer "
                f"alone {moved['instances_per_s']} instances/s, {moved['mb_per_s']} MB/s "
                f"({args.associations} associations)"
            )

            # 2. Orthanc's own C-MOVE of the same studies to storescp (no index, no fsync).
            scp = subprocess.Popen(
                ["storescp", "-aet", CALLING, "-od", str(scp_dir), "+xa", str(scp_port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(0.5)
                started = time.perf_counter()
                for study in studies:
                    subprocess.run(
                        [
                            "movescu", "-S", "-aet", CALLING, "-aec", ORTHANC_AET,
                            "-aem", CALLING, "-k", "QueryRetrieveLevel=STUDY",
                            "-k", f"StudyInstanceUID={study.uid}",
                            "127.0.0.1", str(o.dicom_port),
                        ],
                        env=env, check=True, capture_output=True,
                    )  # fmt: skip
                move_s = time.perf_counter() - started
            finally:
                scp.terminate()
                scp.wait(timeout=30)
            n, size = _folder_stats(scp_dir)
            print(
                f"Orthanc C-MOVE -> storescp: {n} instances, {size / 1e6:.1f} MB in "
                f"{move_s:.2f} s = {n / move_s:.1f} instances/s, {size / 1e6 / move_s:.2f} MB/s "
                "(one study per C-MOVE, sequential)"
            )
            print(
                f"ratio solent transfer / Orthanc C-MOVE: "
                f"{moved['instances_per_s'] / (n / move_s):.2f} (instances/s)"
            )
            print(
                f"projection for {EXAMS:,} exams at {args.instances_per_exam:g} instances and "
                f"{args.mb_per_exam:g} MB per exam:"
            )
            _projection("solent migrate (transfer rate)", moved["instances_per_s"],
                        moved["mb_per_s"], args)  # fmt: skip
            _projection("Orthanc C-MOVE to storescp", n / move_s, size / 1e6 / move_s, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
