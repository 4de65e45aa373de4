"""`python -m bench compare`: Solent and Orthanc side by side, same machine, same run, same data.

Both archives start fresh on free loopback ports (Solent on its embedded default or PostgreSQL,
Orthanc with SQLite or its PostgreSQL index plugin, both with the DICOMweb plugin/router), get
the same data, and each phase is measured on both, alternating which goes first, with the
median over repeated runs. Every phase also records how much CPU *other* processes used while
it ran, because a 2-core shared machine is noisy. The table prints Solent / Orthanc ratios
against the team's targets and the machine's physical limits; JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from bench import compare_data, limits, population, pyspy
from bench import compare_phases as ph
from bench.cpuwatch import CpuWatch, others_now
from bench.orthanc import ORTHANC_AET, OrthancServer, PostgresTarget
from bench.solent_server import SolentServer

T = TypeVar("T")
RESULTS = Path(__file__).resolve().parent / "results"
SLICES, SIZE = 300, 512
BULK_LOAD_FROM = 5000  # studies per fill from which Orthanc stores them without fsync
DATE_QUERY = {"StudyDate": "20240101-20240331", "ModalitiesInStudy": "CT"}


@dataclass(frozen=True)
class Spec:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: float | None = None  # Solent/Orthanc ratio the team aims for
    limit_key: str | None = None


SPECS = [
    Spec("cstore_1", "C-STORE {slices}-slice CT, 1 association", "inst/s", True, 1.5, "ingest"),
    Spec("cstore_4", "C-STORE {slices}-slice CT, 4 associations", "inst/s", True, 1.5, "ingest"),
    Spec("stow", "STOW-RS {slices}-slice CT, 50 per request", "inst/s", True, 1.5, "ingest"),
    Spec("cfind_pid_{n}", "C-FIND study, PatientID+issuer @{n}", "ms", False),
    Spec("cfind_range_{n}", "C-FIND study, date range+modality @{n}", "ms", False),
    Spec("qido_pid_{n}", "QIDO-RS /studies, PatientID+issuer @{n}", "ms", False, 0.5),
    Spec("qido_range_{n}", "QIDO-RS /studies, date range+modality @{n}", "ms", False, 0.5),
    Spec("wado_mbs", "WADO-RS series retrieval ({slices} slices)", "MB/s", True, 2.0, "tcp"),
    Spec("wado_ttfb", "WADO-RS series time to first byte", "ms", False),
    Spec("metadata", "WADO-RS series /metadata ({slices} instances)", "ms", False, 0.5),
    Spec("frames", "WADO-RS /frames, 8 concurrent clients", "req/s", True),
    Spec("cget", "C-GET series ({slices} slices, getscu)", "MB/s", True, None, "tcp"),
    Spec("rendered", "WADO-RS /rendered JPEG, one instance", "ms", False),
    Spec("thumbnail", "WADO-RS /thumbnail JPEG, one instance", "ms", False),
]


@dataclass
class Side:
    key: str = ""  # the row's key, names profile files
    samples: list[float] = field(default_factory=list)
    note: str = ""  # "n/a (not implemented: ...)" or "failed: ..."
    others_cpu: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float | None:
        return statistics.median(self.samples) if self.samples and not self.note else None

    def as_json(self) -> dict[str, Any]:
        return {
            "median": self.value,
            "samples": [round(s, 4) for s in self.samples],
            "note": self.note or None,
            "other_processes_cpu_pct": [round(c, 1) for c in self.others_cpu],
            **self.extra,
        }


@dataclass
class Row:
    spec: Spec
    key: str
    label: str
    solent: Side = field(default_factory=Side)
    orthanc: Side = field(default_factory=Side)
    limit: float | None = None
    limit_note: str = ""

    def __post_init__(self) -> None:
        self.solent.key = self.orthanc.key = self.key

    @property
    def ratio(self) -> float | None:
        s, o = self.solent.value, self.orthanc.value
        return s / o if s is not None and o else None

    def meets_target(self) -> bool | None:
        r, target = self.ratio, self.spec.target
        if r is None or target is None:
            return None
        return r >= target if self.spec.higher_is_better else r <= target

    def solent_slower(self) -> bool:
        r = self.ratio
        if r is None:
            return False
        return r < 1 if self.spec.higher_is_better else r > 1


@dataclass
class Config:
    quick: bool
    postgres: bool
    postgres_admin_url: str
    reps: int
    latency_reps: int
    slices: int  # of the CT series every phase uses (300; 100 in --quick)
    sizes: list[int]
    frames_seconds: float
    out: Path | None
    keep: bool
    profile: Path | None = None
    query_timeout: float = 30.0  # a slower query marks the row failed and restarts Solent
    only: frozenset[str] = frozenset(("ingest", "retrieval", "index"))
    dicom_engine: str = ""  # SOLENT_DICOM_ENGINE of the Solent under test; "": its default


class Comparison:
    """Runs every phase on both archives and keeps the rows."""

    solent_server: SolentServer
    solent_target: ph.Target
    orthanc_target: ph.Target
    reference: compare_data.SeriesUIDs
    limits: limits.Limits

    def __init__(self, cfg: Config, console: Console) -> None:
        self.cfg = cfg
        self.console = console
        self.rows: dict[str, Row] = {}
        self.meta: dict[str, Any] = {}
        self.work = Path(tempfile.mkdtemp(prefix="bench-compare-", dir="/var/tmp"))
        self.ram = Path(tempfile.mkdtemp(prefix="bench-cget-", dir=_ram_dir()))
        self.progress: Progress | None = None
        self.task: Any = None
        self.watch = CpuWatch()
        self.targets_pids: set[int] = set()
        self.timings: list[tuple[str, float]] = []
        self.echo_floor: dict[str, float] = {}
        self._profiles: dict[str, int] = {}
        self._last_step = time.perf_counter()
        self._variant = 0

    # -- bookkeeping -----------------------------------------------------------------------

    def row(self, spec: Spec, n: int | None = None) -> Row:
        size = _size_label(n)
        key = spec.key.format(n=size)
        if key not in self.rows:
            label = spec.label.format(n=size, slices=self.cfg.slices)
            self.rows[key] = Row(spec, key, label)
        return self.rows[key]

    def step(self, what: str) -> None:
        now = time.perf_counter()
        self.timings.append((what, round(now - self._last_step, 1)))
        self._last_step = now
        if self.progress is not None:
            self.progress.update(self.task, advance=1, description=what)
        else:
            self.console.log(what)

    def measure(self, side: Side, target: ph.Target, fn: Callable[[], T]) -> T | None:
        """Run one measurement with CPU accounting; n/a and failures become the side's note."""
        if side.note:
            return None
        self.watch.server_pids = set(self.targets_pids)
        recording = self._profile(side, target)
        before = self.watch.sample()
        try:
            result = fn()
        except ph.Unavailable as exc:
            side.note = f"n/a ({exc})"
            return None
        except ph.TimedOut as exc:
            side.note = f"failed: {exc}"
            if target.name == "Solent":
                self._restart_solent()  # its worker may still be busy; keep later phases clean
            return None
        except ph.Failed as exc:
            side.note = f"failed: {exc}"
            return None
        finally:
            if recording is not None:
                raw = recording.stop()
                raw.with_suffix(".top.txt").write_text(pyspy.summarise(raw), encoding="utf-8")
        use = CpuWatch.delta(before, self.watch.sample())
        side.others_cpu.append(use.others_pct)
        return result

    def _restart_solent(self) -> None:
        solent = self.solent_server
        solent.stop(remove=False)
        solent.start()
        old = self.solent_target
        self.solent_target = ph.Target(
            "Solent",
            solent.dicomweb_url,
            solent.ae_title,
            solent.dicom_port,
            {solent.pid},
            old.headers,
        )
        self.targets_pids = {solent.pid, *(self.targets_pids - old.pids)}
        self.__dict__.get("_http", {}).pop("Solent", None)
        self.meta.setdefault("solent_restarts", 0)
        self.meta["solent_restarts"] += 1

    def _profile(self, side: Side, target: ph.Target) -> pyspy.Recording | None:
        """With --profile, sample the Solent server during each of its measurements."""
        if self.cfg.profile is None or target.name != "Solent":
            return None
        self.cfg.profile.mkdir(parents=True, exist_ok=True)
        self._profiles[side.key] = self._profiles.get(side.key, 0) + 1
        out = self.cfg.profile / f"{side.key}-{self._profiles[side.key]}.txt"
        return pyspy.Recording(next(iter(target.pids)), out)

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.cfg
        busy = others_now(1.0)
        self.meta = machine_description()
        self.meta.update(
            started=datetime.now(UTC).isoformat(timespec="seconds"),
            command="python -m bench compare"
            + (" --quick" if cfg.quick else "")
            + (" --postgres" if cfg.postgres else ""),
            backend="postgresql" if cfg.postgres else "embedded (SQLite + files)",
            other_processes_cpu_pct_at_start=round(busy, 1),
            reps=cfg.reps,
            latency_reps=cfg.latency_reps,
            index_sizes=cfg.sizes,
            series_slices=cfg.slices,
            phase_groups=sorted(cfg.only),
            solent_commit=_git_commit(),
            orthanc_packages=_package_versions(
                ["orthanc", "orthanc-dicomweb"] + (["orthanc-postgresql"] if cfg.postgres else [])
            ),
            orthanc_fill=f"REST POST /instances; from {BULK_LOAD_FROM} studies per fill Orthanc "
            "is restarted without fsync (SyncStorageArea off, PostgreSQL synchronous_commit "
            "off) for the untimed fill, then restarted durable before any query",
        )
        if busy > 25:
            self.console.print(
                f"[yellow]warning: other processes use {busy:.0f}% of the machine right now; "
                "figures will be noisy[/]"
            )
        steps = (
            3
            + (3 * cfg.reps if "ingest" in cfg.only else 0)
            + (5 * cfg.reps if "retrieval" in cfg.only else 0)
            + (6 * len(cfg.sizes) if "index" in cfg.only else 0)
        )
        progress_ctx = (
            Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            if self.console.is_terminal
            else nullcontext()
        )
        with progress_ctx as progress:
            if isinstance(progress, Progress):
                self.progress = progress
                self.task = progress.add_task("preparing", total=steps)
            base = compare_data.base_series(SLICES, SIZE)
            if cfg.slices < SLICES:
                base = self.work / "reference"
                compare_data.write_variant(0, base, SLICES, SIZE, count=cfg.slices)
            self.step("CT series ready")
            self.measure_limits(base)
            self.step("physical limits measured")
            with self.servers(base) as (solent, orthanc):
                if "ingest" in cfg.only:
                    self.ingest_phases()
                if "retrieval" in cfg.only:
                    self.retrieval_phases()
                if "index" in cfg.only:
                    self.index_phases(solent, orthanc)
        self.meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.meta["step_seconds"] = self.timings

    def measure_limits(self, base: Path) -> None:
        files = list(base.glob("*.dcm"))
        total = sum(f.stat().st_size for f in files)
        repeats = 1 if self.cfg.quick else 3
        lim = limits.measure(self.work, total, total // len(files), repeats=repeats)
        self.limits = lim
        self.meta["limits"] = lim.as_json()
        self.meta["series_bytes"] = total

    @contextmanager
    def servers(self, base: Path) -> Iterator[tuple[SolentServer, OrthancServer]]:
        """Both archives started, each holding the reference series (loaded untimed, in
        parallel with the other's start-up)."""
        cfg = self.cfg
        databases: list[str] = []
        solent_url = ""
        pg: PostgresTarget | None = None
        if cfg.postgres:
            solent_url, pg, databases = _create_databases(cfg.postgres_admin_url)
            self.meta["postgresql"] = _postgres_version(cfg.postgres_admin_url)
        engine = {"SOLENT_DICOM_ENGINE": cfg.dicom_engine} if cfg.dicom_engine else {}
        solent = SolentServer(compare_data.TRUST_NAMES, database_url=solent_url, extra_env=engine)
        self.meta["dicom_engine"] = cfg.dicom_engine or "default"
        solent.workdir = self.work / "solent"
        solent.workdir.mkdir(parents=True, exist_ok=True)
        orthanc = OrthancServer(postgres=pg, workdir=self.work / "orthanc")
        try:
            solent.prepare()
            with ThreadPoolExecutor(3) as pool:
                jobs: list[Future[Any]] = [
                    pool.submit(solent.start),
                    pool.submit(self._import_reference, solent, base),
                    pool.submit(self._start_orthanc, orthanc, base),
                ]
                for job in jobs:
                    job.result()
            self.solent_target = ph.Target(
                "Solent",
                solent.dicomweb_url,
                solent.ae_title,
                solent.dicom_port,
                {solent.pid},
                solent.headers(),
            )
            self.targets_pids = {solent.pid, orthanc.pid}
            self.solent_server = solent
            self.reference = compare_data.series_uids(0, cfg.slices)
            self.step("both archives started, reference series loaded")
            yield solent, orthanc
        finally:
            solent.stop(remove=False)
            orthanc.stop(remove=False)
            if not cfg.keep:
                shutil.rmtree(self.work, ignore_errors=True)
                shutil.rmtree(self.ram, ignore_errors=True)
            if databases:
                _drop_databases(cfg.postgres_admin_url, databases)

    def _start_orthanc(self, orthanc: OrthancServer, base: Path) -> None:
        orthanc.start()
        self.orthanc_target = ph.Target(
            "Orthanc", orthanc.dicomweb_url, ORTHANC_AET, orthanc.dicom_port, {orthanc.pid}
        )
        ph.cstore(self.orthanc_target, sorted(base.glob("*.dcm")), 4)

    @staticmethod
    def _import_reference(solent: SolentServer, base: Path) -> None:
        """`solent import` (the one ingest pipeline) of variant 0, beside the server."""
        out = solent.cli("import", str(base), "--trust", compare_data.CT_TRUST, "--json")
        summary = json.loads(out.stdout)
        stored = len(summary.get("stored", [])) + len(summary.get("duplicate", []))
        if stored < len(list(base.glob("*.dcm"))):
            raise RuntimeError(f"solent import stored only {stored}: {out.stdout[-400:]}")

    def _sides(self, rep: int) -> list[tuple[ph.Target, str]]:
        order = [(self.solent_target, "solent"), (self.orthanc_target, "orthanc")]
        return order if rep % 2 == 0 else order[::-1]

    def ingest_phases(self) -> None:
        modes: list[tuple[Spec, Callable[[ph.Target, list[Path]], float]]] = [
            (SPECS[0], lambda t, f: ph.cstore(t, f, 1)),
            (SPECS[1], lambda t, f: ph.cstore(t, f, 4)),
            (SPECS[2], lambda t, f: ph.stow(t, f)),
        ]
        per_file = self.limits.disk_per_file_files_s
        for rep in range(self.cfg.reps):
            for spec, fn in modes:
                row = self.row(spec)
                row.limit, row.limit_note = per_file, "inst/s writing the same files, fsync each"
                self._variant += 1
                folder = self.work / f"variant-{self._variant}"
                compare_data.write_variant(
                    self._variant, folder, SLICES, SIZE, count=self.cfg.slices
                )
                files = sorted(folder.glob("*.dcm"))
                size = sum(f.stat().st_size for f in files)
                for target, name in self._sides(rep):
                    side: Side = getattr(row, name)
                    seconds = self.measure(side, target, partial(fn, target, files))
                    if seconds:
                        side.samples.append(len(files) / seconds)
                        side.extra.setdefault("mb_s", []).append(round(size / seconds / 1e6, 1))
                shutil.rmtree(folder, ignore_errors=True)
                self.step(f"ingest {spec.key} run {rep + 1}")

    def retrieval_phases(self) -> None:
        ref = self.reference
        expect = self.meta["series_bytes"] - 4096 * self.cfg.slices  # headers may differ a little
        for target in (self.solent_target, self.orthanc_target):
            with suppress(ph.Unavailable, ph.Failed):
                ph.warm(target, ref.study, ref.series)
        tcp = self.limits.tcp_loopback_mb_s
        for rep in range(self.cfg.reps):
            for target, name in self._sides(rep):
                # series /metadata latency: several requests on one connection
                row = self.row(SPECS[9])
                side = getattr(row, name)

                def metadata(t: ph.Target = target) -> list[float]:
                    http = ph.Http(t)
                    try:
                        out = []
                        for _ in range(max(1, self.cfg.latency_reps // self.cfg.reps)):
                            seconds, n = ph.series_metadata(http, ref.study, ref.series)
                            if n != self.cfg.slices:
                                raise ph.Failed(f"/metadata listed {n} instances")
                            out.append(seconds * 1000)
                        return out
                    finally:
                        http.close()

                got = self.measure(side, target, metadata)
                if got:
                    side.samples.extend(got)
            self.step(f"series metadata run {rep + 1}")
            for target, name in self._sides(rep):
                mbs, ttfb = self.row(SPECS[7]), self.row(SPECS[8])
                mbs.limit, mbs.limit_note = tcp, "MB/s over one loopback TCP connection"
                r = self.measure(
                    getattr(mbs, name),
                    target,
                    partial(ph.wado_series, target, ref.study, ref.series, expect),
                )
                if r is not None:
                    getattr(mbs, name).samples.append(r.body_bytes / r.seconds / 1e6)
                    getattr(ttfb, name).samples.append(r.ttfb * 1000)
                elif getattr(mbs, name).note:
                    getattr(ttfb, name).note = getattr(mbs, name).note
            self.step(f"WADO-RS series run {rep + 1}")
            for target, name in self._sides(rep):
                row = self.row(SPECS[10])
                got_f = self.measure(
                    getattr(row, name),
                    target,
                    partial(
                        ph.frames_throughput,
                        target,
                        ref.study,
                        ref.series,
                        list(ref.sops),
                        duration=self.cfg.frames_seconds,
                    ),
                )
                if got_f is not None:
                    getattr(row, name).samples.append(got_f[0])
                    getattr(row, name).extra.setdefault("median_latency_ms", []).append(
                        round(got_f[1] * 1000, 2)
                    )
            self.step(f"frames run {rep + 1}")
            for target, name in self._sides(rep):
                row = self.row(SPECS[11])
                row.limit, row.limit_note = tcp, "MB/s over one loopback TCP connection"
                got_g = self.measure(
                    getattr(row, name),
                    target,
                    partial(ph.cget, target, ref.study, ref.series, self.ram),
                )
                if got_g is not None:
                    seconds, files, size = got_g
                    if files < self.cfg.slices:
                        getattr(row, name).note = f"failed: C-GET returned {files} files"
                    getattr(row, name).samples.append(size / seconds / 1e6)
            self.step(f"C-GET run {rep + 1}")
            for spec in (SPECS[12], SPECS[13]):
                for target, name in self._sides(rep):
                    side = getattr(self.row(spec), name)
                    # A different instance each run, so the first view is a first view.
                    sop = ref.sops[(len(ref.sops) // 2 + 7 * rep) % len(ref.sops)]
                    got_i = self.measure(
                        side,
                        target,
                        partial(
                            ph.image_latency,
                            target,
                            ref.study,
                            ref.series,
                            sop,
                            spec.key,
                            max(1, self.cfg.latency_reps // self.cfg.reps),
                        ),
                    )
                    if got_i is not None:
                        side.samples.extend(x * 1000 for x in got_i[1])
                        side.extra.setdefault("first_view_ms", []).append(round(got_i[0] * 1000, 1))
            self.step(f"rendered/thumbnail run {rep + 1}")

    def index_phases(self, solent: SolentServer, orthanc: OrthancServer) -> None:
        url = solent.database_url_effective
        loaded = 0
        uploaded: set[str] = set()
        probe: tuple[str, str] | None = None
        for size in self.cfg.sizes:
            started = time.perf_counter()
            summary = population.fill_solent(url, size - loaded, seed=size)
            if probe is None:
                # A patient of the bench DICOM node's own trust: Solent scopes C-FIND to what
                # the calling node may see (its trust and linked records), Orthanc does not.
                own = [p for p in summary.sample_patients if p[0] == compare_data.CT_TRUST]
                probe = own[len(own) // 2]
            fill_s = time.perf_counter() - started
            self.step(f"Solent index grown to {_size_label(size)} (bulk insert {fill_s:.0f}s)")
            rows = [r for r in population.solent_studies(url) if r.study_uid not in uploaded]
            rows = [r for r in rows if r.study_uid.startswith("2.25.")]
            started = time.perf_counter()
            # Two restarts cost a few seconds: worth it for the 10k/100k fills, not for --quick.
            bulk = len(rows) >= BULK_LOAD_FROM
            with orthanc.bulk_load() if bulk else nullcontext(orthanc):
                population.upload_orthanc(
                    orthanc.base_url,
                    rows,
                    on_done=self.fill_progress(f"Orthanc fill to {_size_label(size)}", len(rows)),
                )
            if bulk:
                self._orthanc_restarted(orthanc)
            uploaded.update(r.study_uid for r in rows)
            up_s = time.perf_counter() - started
            self.meta.setdefault("population", []).append(
                {
                    "studies": size,
                    "solent_bulk_insert_s": round(fill_s, 1),
                    "orthanc_rest_upload_s": round(up_s, 1),
                    "orthanc_instances_per_s": round(len(rows) / up_s, 1) if up_s else None,
                    "orthanc_studies": orthanc.statistics().get("CountStudies"),
                }
            )
            loaded = size
            self.step(f"Orthanc index grown to {_size_label(size)} ({len(rows) / up_s:.0f}/s)")
            issuer, local_id = probe
            pid_keys = {"PatientID": local_id, "IssuerOfPatientID": issuer}
            self.query_phases(size, pid_keys)

    def fill_progress(self, what: str, total: int) -> Callable[[int], None]:
        """A callback for each stored batch: a second bar on a terminal, a log line per ~10%
        otherwise (the 100k fill is the run's longest step)."""
        started = time.perf_counter()
        done = 0
        if total == 0:
            return lambda n: None
        if self.progress is not None:
            progress = self.progress
            task = progress.add_task(what, total=total)

            def advance(n: int) -> None:
                nonlocal done
                done += n
                progress.update(task, advance=n)
                if done >= total:
                    progress.remove_task(task)

            return advance
        every = max(1, total // 10)

        def log(n: int) -> None:
            nonlocal done
            before, done = done, done + n
            if done // every > before // every or done >= total:
                rate = done / max(time.perf_counter() - started, 1e-9)
                eta = (total - done) / rate if rate else 0
                self.console.log(f"{what}: {done:,}/{total:,} ({rate:.0f}/s, ~{eta:.0f} s left)")

        return log

    def _orthanc_restarted(self, orthanc: OrthancServer) -> None:
        """After a restart (same ports, new pid): account its new pid, drop its old connection."""
        old = self.orthanc_target.pids
        self.orthanc_target.pids = {orthanc.pid}
        self.targets_pids = {orthanc.pid, *(self.targets_pids - old)}
        cached = self.__dict__.get("_http", {}).pop("Orthanc", None)
        if cached is not None:
            cached.close()

    def query_phases(self, size: int, pid_keys: dict[str, str]) -> None:
        for target in (self.solent_target, self.orthanc_target):
            if target.name not in self.echo_floor:
                try:
                    self.echo_floor[target.name] = statistics.median(
                        ph.echo_seconds(target) for _ in range(3)
                    )
                except (ph.Unavailable, ph.Failed):
                    self.echo_floor[target.name] = 0.05
        queries = [
            (SPECS[5], SPECS[3], pid_keys),
            (SPECS[6], SPECS[4], DATE_QUERY),
        ]
        for qido_spec, cfind_spec, params in queries:
            for spec, kind in ((qido_spec, "qido"), (cfind_spec, "cfind")):
                row = self.row(spec, size)
                row.solent.extra["query"] = row.orthanc.extra["query"] = params
                for rep in range(self.cfg.latency_reps):
                    for target, name in self._sides(rep):
                        side: Side = getattr(row, name)
                        got = self.measure(side, target, self._query_fn(kind, target, params))
                        if got is not None:
                            side.samples.append(got[0] * 1000)
                            side.extra["matches"] = got[1]
                self.step(f"{spec.key.format(n=_size_label(size))}")

    def _query_fn(
        self, kind: str, target: ph.Target, params: dict[str, str]
    ) -> Callable[[], tuple[float, int]]:
        if kind == "cfind":
            keys = {**params, "StudyInstanceUID": "", "StudyDate": params.get("StudyDate", "")}
            floor = self.echo_floor[target.name]
            timeout = self.cfg.query_timeout
            return lambda: ph.cfind(target, keys, floor, timeout=timeout)
        conn = self._http_for(target)
        return lambda: ph.qido(conn, params)

    def _http_for(self, target: ph.Target) -> ph.Http:
        cache: dict[str, ph.Http] = self.__dict__.setdefault("_http", {})
        if target.name not in cache:
            cache[target.name] = ph.Http(target, timeout=self.cfg.query_timeout)
        return cache[target.name]

    # -- output ----------------------------------------------------------------------------

    def ordered_rows(self) -> list[Row]:
        order = {s.key.split("_{")[0]: i for i, s in enumerate(SPECS)}

        def key(r: Row) -> tuple[int, int, str]:
            base = r.key.rsplit("_", 1)[0] if r.spec.key.endswith("{n}") else r.key
            size = next((n for n in self.cfg.sizes if r.key.endswith(_size_label(n))), 0)
            return (order.get(base, 99), size, r.key)

        return sorted(self.rows.values(), key=key)

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": self.meta,
            "rows": [
                {
                    "key": r.key,
                    "phase": r.label,
                    "unit": r.spec.unit,
                    "higher_is_better": r.spec.higher_is_better,
                    "solent": r.solent.as_json(),
                    "orthanc": r.orthanc.as_json(),
                    "ratio_solent_over_orthanc": round(r.ratio, 3) if r.ratio else None,
                    "target_ratio": r.spec.target,
                    "meets_target": r.meets_target(),
                    "limit": round(r.limit, 1) if r.limit else None,
                    "limit_note": r.limit_note or None,
                }
                for r in self.ordered_rows()
            ],
        }

    COLUMNS = (
        ("phase", "left"),
        ("unit", "left"),
        ("Solent", "right"),
        ("Orthanc", "right"),
        ("Solent/Orthanc", "right"),
        ("target", "right"),
        ("limit", "right"),
        ("matches S/O", "right"),
        ("others' CPU", "right"),
    )

    def table(self) -> Table:
        title = (
            f"Solent vs Orthanc — {self.meta.get('backend')} — "
            f"{self.meta.get('nproc')} cores, {self.meta.get('cpu_model')}"
        )
        table = Table(title=title)
        for col, justify in self.COLUMNS:
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for r in self.ordered_rows():
            table.add_row(*self.cells(r, rich=True))
        return table

    def notes(self) -> list[str]:
        """Why a cell says n/a or failed, one line each."""
        out = []
        for r in self.ordered_rows():
            for name, side in (("Solent", r.solent), ("Orthanc", r.orthanc)):
                if side.note:
                    out.append(f"{r.label} — {name}: {side.note}")
        return out

    def cells(self, r: Row, *, rich: bool) -> list[str]:
        ratio = r.ratio
        ratio_txt = f"{ratio:.2f}x" if ratio is not None else "—"
        if rich and ratio is not None:
            good = r.meets_target()
            if good is None:
                good = not r.solent_slower()
            ratio_txt = f"[{'green' if good else 'red'}]{ratio_txt}[/]"
        target = r.spec.target
        target_txt = "—" if target is None else ("≥" if r.spec.higher_is_better else "≤")
        if target is not None:
            target_txt += f"{target:g}x"
        others = r.solent.others_cpu + r.orthanc.others_cpu
        sm, om = r.solent.extra.get("matches"), r.orthanc.extra.get("matches")
        matches = "" if sm is None and om is None else f"{_opt(sm)}/{_opt(om)}"
        if rich and sm is not None and om is not None and sm != om:
            matches = f"[red]{matches}[/]"
        return [
            r.label,
            r.spec.unit,
            _fmt(r.solent),
            _fmt(r.orthanc),
            ratio_txt,
            target_txt,
            f"{r.limit:,.0f}" if r.limit else "—",
            matches,
            f"{statistics.median(others):.0f}%" if others else "—",
        ]

    def markdown(self) -> str:
        lines = [
            "| " + " | ".join(c for c, _ in self.COLUMNS) + " |",
            "|" + "".join("---|" if j == "left" else "---:|" for _, j in self.COLUMNS),
        ]
        for r in self.ordered_rows():
            lines.append("| " + " | ".join(self.cells(r, rich=False)) + " |")
        notes = self.notes()
        if notes:
            lines += ["", *(f"- {n}" for n in notes)]
        return "\n".join(lines)


def _opt(v: Any) -> str:
    return "?" if v is None else str(v)


def _fmt(side: Side) -> str:
    if side.note:
        return "n/a" if side.note.startswith("n/a") else "failed"
    v = side.value
    if v is None:
        return "—"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}" if v >= 1 else f"{v:.2g}"


def _size_label(n: int | None) -> str:
    if n is None:
        return ""
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def _ram_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else "/tmp"


def machine_description() -> dict[str, Any]:
    model = ""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "orthanc": _version(["Orthanc", "--version"]),
        "dcmtk": _version(["storescu", "--version"]),
    }


def _version(cmd: list[str]) -> str:
    import subprocess

    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except OSError:
        return "not installed"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def _git_commit() -> str:
    """HEAD of the checkout being measured, with "+dirty" when files differ from it."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def _package_versions(packages: list[str]) -> dict[str, str]:
    import subprocess

    out = {}
    for name in packages:
        try:
            got = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", name],
                capture_output=True,
                text=True,
                timeout=10,
            )
        except OSError:
            got = None
        out[name] = got.stdout.strip() if got is not None and got.returncode == 0 else "missing"
    return out


def _create_databases(admin_url: str) -> tuple[str, PostgresTarget, list[str]]:
    import psycopg
    from sqlalchemy.engine import make_url

    suffix = f"{os.getpid()}_{int(time.time())}"
    names = [f"bench_solent_{suffix}", f"bench_orthanc_{suffix}"]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url)
    solent_url = url.set(database=names[0]).render_as_string(hide_password=False)
    pg = PostgresTarget(
        url.host or "127.0.0.1",
        url.port or 5432,
        names[1],
        url.username or "postgres",
        url.password or "",
    )
    return solent_url, pg, names


def _postgres_version(admin_url: str) -> str:
    import psycopg

    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else ""


def _drop_databases(admin_url: str, names: list[str]) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in names:
            with suppress(psycopg.Error):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(prog="python -m bench compare", description=__doc__)
    p.add_argument("--quick", action="store_true", help="1k studies, fewer repetitions (~2 min)")
    p.add_argument(
        "--postgres",
        action="store_true",
        help="Solent on PostgreSQL, Orthanc with its PostgreSQL index plugin",
    )
    p.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "SOLENT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="admin URL; the bench creates and drops its own databases there",
    )
    p.add_argument("--reps", type=int, help="repetitions of each throughput phase")
    p.add_argument("--sizes", help="index sizes, comma-separated (default 10000,100000)")
    p.add_argument("--out", type=Path, help="JSON output (default bench/results/compare-*.json)")
    p.add_argument("--keep", action="store_true", help="keep the data dirs for inspection")
    p.add_argument(
        "--only",
        help="comma-separated subset of the phase groups: ingest, retrieval, index",
    )
    p.add_argument(
        "--profile",
        type=Path,
        help="record py-spy profiles of solent serve during each Solent measurement into DIR",
    )
    p.add_argument(
        "--dicom-engine",
        choices=("fast", "pynetdicom"),
        help="Solent's DICOM upper layer (SOLENT_DICOM_ENGINE; default: Solent's default)",
    )
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",")] if a.sizes else None
    return Config(
        quick=a.quick,
        postgres=a.postgres,
        postgres_admin_url=a.postgres_url,
        reps=a.reps or (1 if a.quick else 5),
        slices=100 if a.quick else SLICES,
        latency_reps=3 if a.quick else 15,
        sizes=sizes or ([1000] if a.quick else [10_000, 100_000]),
        frames_seconds=2.0 if a.quick else 5.0,
        out=a.out,
        keep=a.keep,
        profile=a.profile,
        only=frozenset(a.only.split(",")) if a.only else Config.only,
        dicom_engine=a.dicom_engine or "",
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    console = Console() if Console().is_terminal else Console(width=170)
    comparison = Comparison(cfg, console)
    started = time.perf_counter()
    try:
        comparison.run()
    except Exception as exc:  # keep what was measured: print and save it, then fail
        console.print_exception()
        comparison.meta["aborted"] = f"{type(exc).__name__}: {exc}"
    comparison.meta["wall_seconds"] = round(time.perf_counter() - started, 1)
    args = sys.argv[1:] if argv is None else argv
    comparison.meta["command"] = " ".join(["python -m bench compare", *args]).strip()
    console.print(comparison.table())
    for note in comparison.notes():
        console.print(f"  {note}", highlight=False)
    if cfg.quick:
        sizes = ", ".join(_size_label(n) for n in cfg.sizes)
        console.print(
            f"--quick: a {cfg.slices}-slice series (not {SLICES}), index grown to {sizes} "
            "studies (not 10k/100k), one run per throughput phase."
        )
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    flavour = ("quick-" if cfg.quick else "") + ("postgres-" if cfg.postgres else "")
    out = cfg.out or RESULTS / f"compare-{flavour}{stamp}.json"
    data = comparison.as_json()
    data["markdown_table"] = comparison.markdown()
    out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    console.print(f"JSON: {out}  ({comparison.meta['wall_seconds']:.0f} s)")
    return 1 if "aborted" in comparison.meta else 0
