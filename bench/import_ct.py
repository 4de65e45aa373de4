"""`python -m bench import`: `solent import` of a 300-slice 512x512 16-bit CT series.

`python -m bench import [--repeat 3] [--backends sqlite,postgresql] [--workers N]`

Each run imports the cached series (bench/datasets.py) with the real `solent import` command
into a fresh archive: a new data dir (SQLite + filesystem), or a new PostgreSQL database
(``SOLENT_BENCH_POSTGRES_URL``, default postgresql://postgres@127.0.0.1:5432/test) with blobs on
the filesystem. Every instance is durable (fsynced, committed) before it is reported, as in
production. The median of the runs is printed as instances/s and MB/s, twice: end to end (from
starting the command to its exit, interpreter start-up included) and steady state (first to
last stored instance).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.datasets import ct_series, folder_bytes

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
SOLENT = Path(sys.executable).parent / "solent"
console = Console(stderr=True)


@dataclass(frozen=True)
class Run:
    instances: int
    megabytes: float
    total_s: float  # command start to exit
    steady_s: float  # first to last stored instance

    @property
    def steady_rate(self) -> float:
        return (self.instances - 1) / self.steady_s if self.steady_s > 0 else 0.0


@contextmanager
def fresh_backend(name: str, pg_admin: str) -> Iterator[dict[str, str]]:
    """SOLENT_* variables of an empty archive on ``name``; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="solent-bench-import-", dir="/var/tmp") as tmp:
        env = {"SOLENT_DATA_DIR": str(Path(tmp) / "var")}
        if name == "sqlite":
            yield env
            return
        import psycopg
        from psycopg import sql

        db = f"solent_bench_import_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        try:
            yield {**env, "SOLENT_DATABASE_URL": pg_admin.rsplit("/", 1)[0] + "/" + db}
        finally:
            with psycopg.connect(pg_admin, autocommit=True) as conn:
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                conn.execute(drop.format(sql.Identifier(db)))


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    return {**env, **extra}


def import_once(series: Path, env: dict[str, str], workers: int | None, label: str) -> Run:
    subprocess.run(
        [str(SOLENT), "trust", "add", "ZZA", "--name", "Bench Acute Trust"],
        env=_env(env),
        check=True,
        capture_output=True,
    )
    files = sorted(series.glob("*.dcm"))
    cmd = [str(SOLENT), "import", str(series), "--trust", "ZZA", "--jsonl"]
    if workers:
        cmd += ["--workers", str(workers)]
    stored: list[float] = []
    with Progress(
        TextColumn(f"[bold]{label:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=len(files), rate="")
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, env=_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            item = json.loads(line)
            if item["outcome"] != "stored":
                proc.kill()
                raise SystemExit(f"bench import: {item['path']} was {item['outcome']}: {item}")
            stored.append(time.perf_counter())
            n = len(stored)
            progress.update(task, completed=n, rate=f"{n / (stored[-1] - started):6.1f} inst/s")
        stderr = proc.stderr.read() if proc.stderr else ""
        code = proc.wait()
        total = time.perf_counter() - started
    if code != 0 or len(stored) != len(files):
        raise SystemExit(f"bench import: solent import exited {code}:\n{stderr[-2000:]}")
    return Run(len(files), folder_bytes(series) / 1e6, total, stored[-1] - stored[0])


def machine() -> str:
    model = ""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cpu = model or platform.processor()
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench import", description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per backend (median reported)")
    ap.add_argument("--backends", default="sqlite,postgresql", help="sqlite,postgresql")
    ap.add_argument("--workers", type=int, help="solent import --workers (default: setting)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    pg_admin = os.environ.get("SOLENT_BENCH_POSTGRES_URL", DEFAULT_PG)

    with console.status("generating the CT series (cached after the first time)..."):
        series = ct_series()
    n = len(list(series.glob("*.dcm")))
    console.print(f"CT series: {n} slices, {folder_bytes(series) / 1e6:.1f} MB, {series}")
    console.print(f"machine: {machine()}")
    results: dict[str, list[Run]] = {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        label = {"sqlite": "SQLite + filesystem", "postgresql": "PostgreSQL + filesystem"}[backend]
        runs = []
        for i in range(args.repeat):
            with fresh_backend(backend, pg_admin) as env:
                runs.append(
                    import_once(series, env, args.workers, f"{label} {i + 1}/{args.repeat}")
                )
            r = runs[-1]
            console.print(
                f"  {label} run {i + 1}: {r.instances / r.total_s:6.1f} inst/s, "
                f"{r.megabytes / r.total_s:6.1f} MB/s end to end ({r.total_s:.1f} s); "
                f"steady {r.steady_rate:6.1f} inst/s"
            )
        results[label] = runs

    print(f"\nsolent import, {n} x 512x512 16-bit CT ({args.repeat} runs each, median)")
    print(f"{'backend':<26} {'inst/s':>8} {'MB/s':>8} {'seconds':>8} {'steady inst/s':>14}")
    out = {}
    for label, runs in results.items():
        total = statistics.median(r.total_s for r in runs)
        steady = statistics.median(r.steady_rate for r in runs)
        mb = runs[0].megabytes
        print(f"{label:<26} {n / total:8.1f} {mb / total:8.1f} {total:8.1f} {steady:14.1f}")
        out[label] = {
            "instances_per_s": round(n / total, 2),
            "mb_per_s": round(mb / total, 2),
            "seconds": round(total, 2),
            "steady_instances_per_s": round(steady, 2),
            "runs_s": [round(r.total_s, 2) for r in runs],
        }
    print(f"machine: {machine()}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
