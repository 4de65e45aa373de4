"""A peak hour, scaled to this machine, on 1 node and on 3 nodes behind HAProxy (issue 16).

`python -m bench load [--nodes 1,3] [--seconds 30] [--users 12] [--no-think]
[--meetings 12 --followers 10 --mdt-rate 2] [--storage s3|files]`

Every configuration shares one fresh PostgreSQL database and one S3 bucket (a `moto_server` on
loopback; `--storage files`: one blob directory). Locust (the maintained load tool, as a
library) runs a mix of users for a bounded time against loopback only:

* modalities storing: one C-STORE association per user turn, 5 new CT instances each;
* clinicians querying and viewing: QIDO by patient and by date range + modality, series
  metadata, one frame;
* an EPR/PAS: HL7 ADT^A08 over MLLP;
* MDT meetings (bench/load_mdt.py): a presenter per meeting scrolling, its followers on
  WebSockets through the same address (spread over the nodes by the balancer).

It prints per operation: requests, failures, requests/s, p50 and p95 latency (for MDT: the
presenter->follower delivery); the CPU the nodes, the bench itself and the S3 server used
(cores), the machine's load average; and the consortium projection: how many of this machine's
nodes a peak hour of the regional volume needs. Figures depend on the 2 shared cores of this
machine.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gevent import monkey

monkey.patch_all()  # locust needs it before anything opens a socket

import gevent  # noqa: E402
from locust import FastHttpUser, User, between, constant, task  # noqa: E402
from locust.env import Environment  # noqa: E402

from bench import load_mdt  # noqa: E402

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
SECRET = "bench-load-secret-0123456789abcdef0123"
MODALITY = "LOADCT"
SEED_STUDIES = 20
CONSORTIUM_EXAMS_PER_YEAR = 1_750_000
INSTANCES_PER_EXAM = 300  # a CT-heavy mix; MR/CR are fewer, CT thin slices more
PEAK_HOUR_SHARE = 1 / 2000  # ~250 working days x ~8 busy hours, peak hour ~1.0x average


@contextmanager
def scratch_database(admin: str) -> Iterator[str]:
    import psycopg
    from psycopg import sql

    name = f"solent_bench_load_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield admin.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))


class Target:
    """What the users of one run talk to (set before the run)."""

    http = ""
    dicom = 0
    hl7 = 0
    token = ""
    studies: list[tuple[str, str, str, str]] = []  # (patient id, study, series, instance)
    work: Path = Path()
    meetings = 0
    followers = 0
    mdt_rate = 2.0
    mdt_tokens: dict[str, str] = {}


def _fire(env: Environment, kind: str, name: str, started: float, exc: Exception | None) -> None:
    env.events.request.fire(
        request_type=kind,
        name=name,
        response_time=(time.perf_counter() - started) * 1000,
        response_length=0,
        exception=exc,
        context={},
    )


class Clinician(FastHttpUser):
    weight = 8
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.headers = {"Authorization": "Bearer " + Target.token}

    @task(3)
    def qido_patient(self) -> None:
        pid = random.choice(Target.studies)[0]
        self.client.get(
            f"/dicomweb/studies?PatientID={pid}&IssuerOfPatientID=ZZA",
            headers=self.headers,
            name="QIDO by patient",
        )

    @task(2)
    def qido_date_modality(self) -> None:
        self.client.get(
            "/dicomweb/studies?StudyDate=20200101-20261231&ModalitiesInStudy=CT&limit=100",
            headers=self.headers,
            name="QIDO date+modality",
        )

    @task(2)
    def metadata(self) -> None:
        _, study, series, _ = random.choice(Target.studies)
        self.client.get(
            f"/dicomweb/studies/{study}/series/{series}/metadata",
            headers=self.headers,
            name="series metadata",
        )

    @task(4)
    def frame(self) -> None:
        _, study, series, sop = random.choice(Target.studies)
        self.client.get(
            f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1",
            headers={**self.headers, "Accept": "multipart/related; type=application/octet-stream"},
            name="frame",
        )


class Modality(User):
    weight = 2
    wait_time = between(0.5, 1.5)

    @task
    def store_five(self) -> None:
        from pydicom import dcmread
        from pynetdicom import AE
        from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
        from tests.contract.synthetic import new_uid, write_instance

        study, series = new_uid(), new_uid()
        pid = f"LOAD{random.randrange(1000):04d}"
        files = [
            write_instance(
                Target.work / f"{uuid.uuid4().hex}.dcm",
                patient_id=pid,
                study_uid=study,
                series_uid=series,
                seed=random.randrange(1 << 30),
            ).path
            for _ in range(5)
        ]
        ae = AE(ae_title=MODALITY)
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        started = time.perf_counter()
        assoc = ae.associate("127.0.0.1", Target.dicom, ae_title="SOLENT")
        if not assoc.is_established:
            _fire(self.environment, "DIMSE", "C-STORE x5", started, OSError("association refused"))
            return
        try:
            for path in files:
                t0 = time.perf_counter()
                status = assoc.send_c_store(dcmread(path))
                ok = getattr(status, "Status", None) == 0
                _fire(
                    self.environment,
                    "DIMSE",
                    "C-STORE",
                    t0,
                    None if ok else OSError(f"status {getattr(status, 'Status', None)}"),
                )
        finally:
            assoc.release()
            for path in files:
                path.unlink(missing_ok=True)


class Pas(User):
    weight = 1
    wait_time = between(0.5, 1.5)

    @task
    def adt(self) -> None:
        from hl7.client import MLLPClient

        control = uuid.uuid4().hex[:20]
        pid = random.choice(Target.studies)[0]
        message = (
            f"MSH|^~\\&|PAS|ZZA|PACS|ZZX|20260101090000||ADT^A08^ADT_A01|{control}|P|2.4\r"
            "EVN|A08|20260101090000\r"
            f"PID|1||{pid}^^^ZZA^MR||LOAD^PATIENT||19700101|O\r"
        )
        started = time.perf_counter()
        try:
            with MLLPClient("127.0.0.1", Target.hl7) as client:
                ack = client.send_message(message).decode()
            exc = None if f"MSA|AA|{control}" in ack else OSError(ack[-120:])
        except OSError as err:
            exc = err
        _fire(self.environment, "MLLP", "HL7 ADT^A08", started, exc)


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total


def _seed(env: dict[str, str], work: Path) -> None:
    from tests.contract.synthetic import new_uid, write_instance

    from solent.app import build_archive
    from solent.domain.principal import SYSTEM, Channel, Principal, PrincipalKind, Provenance
    from solent.index.hl7_senders import add_sender
    from solent.security.users import UserService
    from solent.services.audit import AuditTrail
    from solent.settings import load_settings

    settings = load_settings(environ=env, data_dir=work / "admin")
    archive = build_archive(settings)
    archive.index.add_trust("ZZA", "Trust A")
    archive.index.add_node(MODALITY, "127.0.0.1", 104, "ZZA", ["store", "query", "retrieve"])
    add_sender(archive.index, "*", "ZZA", ("127.0.0.1",), None)
    users = UserService(archive.index, settings, AuditTrail(archive.index))
    users.add(SYSTEM, "loadclin", "ZZA", ("clinician",), None)
    Target.token = users.issue("loadclin", SYSTEM).token
    for name, role in load_mdt.users(Target.meetings, Target.followers):
        users.add(SYSTEM, name, "ZZA", (role,), None)
        Target.mdt_tokens[name] = users.issue(name, SYSTEM).token
    who = Principal(PrincipalKind.IMPORTER, "bench", "ZZA")
    for s in range(SEED_STUDIES):
        study, series, pid = new_uid(), new_uid(), f"SEED{s:04d}"
        for i in range(5):
            w = write_instance(
                work / "seed" / f"{s}-{i}.dcm",
                patient_id=pid,
                study_uid=study,
                series_uid=series,
                seed=s * 10 + i,
                size=256,
            )
            archive.ingestor.ingest_file(w.path, who, Provenance(Channel.IMPORT))
            Target.studies.append((pid, study, series, w.sop_instance_uid))
    archive.close()


def _prepare_mdt() -> int:
    """Meetings made (once, through the service just started) and the MDT users sized; how many
    locust users they are."""
    if not Target.meetings:
        return 0
    import httpx

    plan = load_mdt.PLAN
    plan.base = Target.http.replace("http://", "ws://")
    if not plan.meetings:
        coord = {"Authorization": "Bearer " + Target.mdt_tokens["loadcoord"]}
        with httpx.Client(base_url=Target.http, headers=coord, timeout=60) as http:
            load_mdt.make_meetings(http, Target.studies, Target.meetings)
        plan.presenters = [Target.mdt_tokens[f"mdt{m}p"] for m in range(Target.meetings)]
        plan.followers = [
            [Target.mdt_tokens[f"mdt{m}f{f}"] for f in range(Target.followers)]
            for m in range(Target.meetings)
        ]
    load_mdt.configure(Target.meetings, Target.followers, Target.mdt_rate)
    return Target.meetings * (1 + Target.followers)


def run_config(
    n_nodes: int,
    users: int,
    seconds: float,
    env: dict[str, str],
    work: Path,
    extra_pids: tuple[int, ...] = (),
) -> str:
    from tests.interop.haproxy_support import Backend, start_haproxy

    from solent.serve_process import serve_env, start_serve, stop_serve

    procs = []
    balancer = None
    try:
        for i in range(n_nodes):
            node_env = serve_env(work / f"node{n_nodes}-{i}", {**env, "SOLENT_DICOM_WORKERS": "1"})
            procs.append(start_serve(node_env))
        if n_nodes == 1:
            ports = procs[0][1]
            Target.http = f"http://127.0.0.1:{ports['http']}"
            Target.dicom, Target.hl7 = ports["dicom"], ports["hl7"]
        else:
            program = shutil.which("haproxy")
            if program is None:
                return f"{n_nodes} nodes: skipped (no haproxy)"
            backends = [
                Backend(f"n{i}", p["http"], p["dicom"], p["hl7"]) for i, (_, p) in enumerate(procs)
            ]
            balancer = start_haproxy(program, work, backends)
            Target.http = balancer.base_url
            Target.dicom, Target.hl7 = balancer.dicom, balancer.hl7
        Clinician.host = Target.http
        classes: list[type[User]] = [Clinician, Modality, Pas]
        mdt_users = _prepare_mdt()
        if mdt_users:
            classes += [load_mdt.Presenter, load_mdt.Follower]
        pids = [proc.pid for proc, _ in procs]
        environment = Environment(user_classes=classes)
        runner = environment.create_local_runner()
        others = [os.getpid(), *extra_pids]
        cpu0, mine0, t0 = _cpu_seconds(pids), _cpu_seconds(others), time.perf_counter()
        load0 = os.getloadavg()[0]
        runner.start(users + mdt_users, spawn_rate=users + mdt_users)
        gevent.spawn_later(seconds, runner.quit)
        runner.greenlet.join()
        elapsed = time.perf_counter() - t0
        cores = (_cpu_seconds(pids) - cpu0) / elapsed
        bench_cores = (_cpu_seconds(others) - mine0) / elapsed
        lines = [_report(n_nodes, users, elapsed, cores, environment)]
        if mdt_users:
            plan = load_mdt.PLAN
            lines.append(
                f"  MDT: {Target.meetings} meetings x {Target.followers} followers; "
                f"{plan.sent} view changes sent, {plan.received} deliveries "
                f"(of ~{plan.sent * Target.followers}; the last moments are in flight at stop)"
            )
        lines.append(
            f"  bench process + S3 server used {bench_cores:.2f} cores; load average "
            f"{load0:.1f} at start, {os.getloadavg()[0]:.1f} at end (2 cores, shared)"
        )
        return "\n".join(lines)
    finally:
        if balancer is not None:
            balancer.stop()
        for proc, _ in procs:
            stop_serve(proc)


def _report(n: int, users: int, elapsed: float, cores: float, env: Environment) -> str:
    lines = [f"{n} node(s), {users} users, {elapsed:.0f} s, nodes used {cores:.2f} cores"]
    lines.append(
        f"  {'operation':<22} {'requests':>8} {'errors':>6} {'req/s':>7} {'p50':>7} {'p95':>7}"
    )
    stored = 0
    for (name, _kind), entry in sorted(env.stats.entries.items()):
        if name == "C-STORE":
            stored = entry.num_requests - entry.num_failures
        p50 = entry.get_response_time_percentile(0.5)
        p95 = entry.get_response_time_percentile(0.95)
        lines.append(
            f"  {name:<22} {entry.num_requests:>8} {entry.num_failures:>6} "
            f"{entry.num_requests / elapsed:>7.1f} {p50:>5.0f}ms {p95:>5.0f}ms"
        )
    for error in sorted(env.stats.errors.values(), key=lambda e: -e.occurrences)[:3]:
        lines.append(f"  error x{error.occurrences}: {error.name}: {str(error.error)[:100]}")
    per_s = stored / elapsed
    need = CONSORTIUM_EXAMS_PER_YEAR * PEAK_HOUR_SHARE * INSTANCES_PER_EXAM / 3600
    lines.append(
        f"  stored {per_s:.1f} instances/s; the consortium's peak hour needs ~{need:.0f}/s "
        f"({CONSORTIUM_EXAMS_PER_YEAR:,} exams/year x {INSTANCES_PER_EXAM} instances, "
        f"peak hour 1/{round(1 / PEAK_HOUR_SHARE)} of the year's)"
    )
    return "\n".join(lines)


@contextmanager
def s3_storage(storage: str, work: Path) -> Iterator[tuple[dict[str, str], tuple[int, ...]]]:
    """SOLENT_* variables of the blob store every node shares, and the S3 server's pid: a
    `moto_server` on a loopback port (real HTTP; the bucket is made by the first archive),
    or one blob directory."""
    if storage == "files":
        yield {"SOLENT_STORAGE_URL": (work / "blobs").as_uri()}, ()
        return
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        yield (
            {
                "SOLENT_STORAGE_URL": f"s3://solent-bench-load-{uuid.uuid4().hex[:8]}/blobs",
                "SOLENT_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                "SOLENT_S3_REGION": "us-east-1",
                "SOLENT_S3_ACCESS_KEY_ID": "testing",
                "SOLENT_S3_SECRET_ACCESS_KEY": "testing",
            },
            (proc.pid,),
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench load", description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="1,3", help="node counts to run, in turn")
    ap.add_argument("--users", type=int, default=12, help="simulated users (bounded)")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each run (bounded)")
    ap.add_argument(
        "--no-think",
        action="store_true",
        help="users send their next request at once: the capacity, not the scaled peak hour",
    )
    ap.add_argument("--meetings", type=int, default=12, help="MDT meetings at once (0: none)")
    ap.add_argument("--followers", type=int, default=10, help="followers per MDT meeting")
    ap.add_argument("--mdt-rate", type=float, default=2.0, help="view changes per presenter/s")
    ap.add_argument("--storage", choices=("s3", "files"), default="s3", help="shared blob store")
    ap.add_argument(
        "--postgres-url", default=os.environ.get("SOLENT_BENCH_POSTGRES_URL", DEFAULT_PG)
    )
    args = ap.parse_args(argv)
    if args.no_think:
        for cls in (Clinician, Modality, Pas):
            cls.wait_time = constant(0)
    users = max(1, min(args.users, 200))
    seconds = max(5.0, min(args.seconds, 600.0))
    Target.meetings = max(0, min(args.meetings, 50))
    Target.followers = max(1, min(args.followers, 30))
    Target.mdt_rate = max(0.1, min(args.mdt_rate, 20.0))
    with (
        tempfile.TemporaryDirectory(prefix="solent-bench-load-") as tmp,
        scratch_database(args.postgres_url) as url,
        s3_storage(args.storage, Path(tmp)) as (storage, store_pids),
    ):
        work = Path(tmp)
        (work / "spool").mkdir()
        Target.work = work / "spool"
        env: dict[str, Any] = {
            "SOLENT_DATABASE_URL": url,
            **storage,
            "SOLENT_TOKEN_SECRET": SECRET,
            # One audit trail, one key: a node with another key refuses to start (issue 11).
            "SOLENT_AUDIT_KEY": "bench-load audit key shared by the nodes",
        }
        _seed(env, work)
        print(
            f"seeded {SEED_STUDIES} studies x 5 instances ({args.storage}); "
            f"MDT {Target.meetings} x {Target.followers} at {Target.mdt_rate}/s; loopback only",
            flush=True,
        )
        for n in [int(x) for x in args.nodes.split(",") if x]:
            print(run_config(n, users, seconds, env, work, store_pids), flush=True)
    return 0
