"""A peak hour, scaled to this machine, on 1 node and on 3 nodes behind HAProxy (issue 16).

`python -m bench load [--nodes 1,3] [--seconds 30] [--users 12] [--no-think]`

Every configuration shares one fresh PostgreSQL database and one blob directory (what S3 is to
nodes on several machines). Locust (the maintained load tool, as a library) runs a mix of
users for a bounded time against loopback only:

* modalities storing: one C-STORE association per user turn, 5 new CT instances each;
* clinicians querying and viewing: QIDO by patient and by date range + modality, series
  metadata, one frame;
* an EPR/PAS: HL7 ADT^A08 over MLLP.

It prints per operation: requests, failures, requests/s, p50 and p95 latency; the CPU the
nodes used (cores); and the consortium projection: how many of this machine's nodes a peak
hour of the regional volume needs. Figures depend on the 2 shared cores of this machine.
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
    Target.token = users.issue("loadclin").token
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


def run_config(n_nodes: int, users: int, seconds: float, env: dict[str, str], work: Path) -> str:
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
        pids = [proc.pid for proc, _ in procs]
        environment = Environment(user_classes=[Clinician, Modality, Pas])
        runner = environment.create_local_runner()
        cpu0, t0 = _cpu_seconds(pids), time.perf_counter()
        runner.start(users, spawn_rate=users)
        gevent.spawn_later(seconds, runner.quit)
        runner.greenlet.join()
        elapsed = time.perf_counter() - t0
        cores = (_cpu_seconds(pids) - cpu0) / elapsed
        return _report(n_nodes, users, elapsed, cores, environment)
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
    ap.add_argument(
        "--postgres-url", default=os.environ.get("SOLENT_BENCH_POSTGRES_URL", DEFAULT_PG)
    )
    args = ap.parse_args(argv)
    if args.no_think:
        for cls in (Clinician, Modality, Pas):
            cls.wait_time = constant(0)
    users = max(1, min(args.users, 200))
    seconds = max(5.0, min(args.seconds, 600.0))
    with (
        tempfile.TemporaryDirectory(prefix="solent-bench-load-") as tmp,
        scratch_database(args.postgres_url) as url,
    ):
        work = Path(tmp)
        (work / "spool").mkdir()
        Target.work = work / "spool"
        env: dict[str, Any] = {
            "SOLENT_DATABASE_URL": url,
            "SOLENT_STORAGE_URL": (work / "blobs").as_uri(),
            "SOLENT_TOKEN_SECRET": SECRET,
            # One audit trail, one key: a node with another key refuses to start (issue 11).
            "SOLENT_AUDIT_KEY": "bench-load audit key shared by the nodes",
        }
        _seed(env, work)
        print(f"seeded {SEED_STUDIES} studies x 5 instances; loopback only", flush=True)
        for n in [int(x) for x in args.nodes.split(",") if x]:
            print(run_config(n, users, seconds, env, work), flush=True)
    return 0
