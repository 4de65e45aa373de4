"""Background jobs on PostgreSQL (issue 16): procrastinate's queue in the index's database.

Two `solent jobs work` processes follow one change feed while instances arrive: every event
becomes its job once (the cursor is advanced in the enqueueing transaction) and every job is
claimed by exactly one worker; a job that failed (blob store unreachable) runs again on
`solent jobs retry`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx

from solent.app import build_archive
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.index.jobs import blob_checks
from solent.settings import load_settings
from tests.conftest import SOLENT, S3Server, start_server
from tests.contract.synthetic import write_instance

WHO = Principal(PrincipalKind.IMPORTER, "test", "ZZA")


def solent(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SOLENT), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_two_workers_do_each_job_once_and_a_failed_job_is_retried(
    tmp_path: Path, fresh_postgres_url: str, s3_env: dict[str, str], s3_server: S3Server
) -> None:
    solent_env = {
        "SOLENT_DATABASE_URL": fresh_postgres_url,
        **s3_env,
        "SOLENT_JOBS_CONSUMERS": "fixity",
        "SOLENT_JOBS_POLL_SECONDS": "0.2",
        "SOLENT_JOBS_SETTLE_SECONDS": "0.5",
        "SOLENT_JOBS_MAX_ATTEMPTS": "1",
        "SOLENT_AUDIT_KEY": "jobs-test audit key shared by the nodes",  # one trail, one key
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    archive = build_archive(load_settings(environ=solent_env, data_dir=tmp_path / "admin"))
    archive.index.add_trust("ZZA", "Trust A")

    logs = [(tmp_path / f"worker{i}.log").open("w") for i in (1, 2)]
    workers = [
        subprocess.Popen(
            [str(SOLENT), "jobs", "work"],
            env={**base, **solent_env, "SOLENT_DATA_DIR": str(tmp_path / f"worker{i}")},
            stdout=subprocess.DEVNULL,
            # A file, not a pipe: nobody reads a pipe while the test runs, and a worker
            # that fills the pipe's 64 KB blocks in its logging and never stops.
            stderr=logs[i - 1],
        )
        for i in (1, 2)
    ]
    try:
        # Instances arrive while both workers run (and both dispatch from the feed).
        sops = []
        for i in range(60):
            w = write_instance(tmp_path / "in" / f"{i}.dcm", seed=i)
            assert archive.ingestor.ingest_file(w.path, WHO, Provenance(Channel.IMPORT)).ok
            sops.append(w.sop_instance_uid)
        deadline = time.monotonic() + 60
        while len(blob_checks(archive.index)) < 60 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # a duplicate, if any, would land now
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in workers:
            try:
                codes.append(proc.wait(timeout=30))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
    for log in logs:
        log.close()
    assert codes == [0, 0], [(tmp_path / f"worker{i}.log").read_text()[-3000:] for i in (1, 2)]

    checks = blob_checks(archive.index)
    per_instance = Counter(c.sop_instance_uid for c in checks)
    assert set(per_instance) == set(sops)
    assert set(per_instance.values()) == {1}, "a job ran twice"
    assert all(c.ok for c in checks)
    by_worker = Counter(c.worker for c in checks)
    assert len(by_worker) == 2, f"both workers claimed jobs: {by_worker}"

    env = {**base, **solent_env, "SOLENT_DATA_DIR": str(tmp_path / "admin")}
    stats = json.loads(solent(env, "jobs", "stats", "--json").stdout)
    assert stats["jobs"] == {"verify_blob": {"succeeded": 60}}
    assert stats["feed"]["fixity"]["backlog"] == 0

    # The store is unreachable for one worker: its job fails (one attempt allowed here) ...
    w = write_instance(tmp_path / "in" / "late.dcm", seed=999)
    assert archive.ingestor.ingest_file(w.path, WHO, Provenance(Channel.IMPORT)).ok
    time.sleep(0.6)  # past the settle time
    outage = {
        **env,
        "SOLENT_S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "SOLENT_DATA_DIR": str(tmp_path / "w3"),
    }
    done = solent(outage, "jobs", "work", "--until-idle")
    assert done.returncode == 0, done.stderr
    failed = json.loads(solent(env, "jobs", "list", "--status", "failed", "--json").stdout)
    assert [(j["task"], j["args"]) for j in failed] == [
        ("verify_blob", {"sop_instance_uid": w.sop_instance_uid})
    ]
    assert blob_checks(archive.index, w.sop_instance_uid) == []
    # ... and runs again, this time to the end, once an administrator retries it.
    retried = solent(env, "jobs", "retry", str(failed[0]["id"]))
    assert retried.returncode == 0, retried.stderr
    done = solent(env, "jobs", "work", "--until-idle")
    assert done.returncode == 0, done.stderr
    (check,) = blob_checks(archive.index, w.sop_instance_uid)
    assert check.ok
    assert solent(env, "jobs", "list", "--status", "failed", "--json").stdout.strip() == "[]"
    archive.close()


def test_serve_runs_the_jobs_of_what_it_stores_and_shows_them_in_metrics(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    """Inside `solent serve`: the dispatcher and worker threads follow the feed by themselves."""
    env = {
        "SOLENT_DATABASE_URL": fresh_postgres_url,
        "SOLENT_JOBS_CONSUMERS": "fixity",
        "SOLENT_JOBS_POLL_SECONDS": "0.2",
        "SOLENT_JOBS_SETTLE_SECONDS": "0.2",
        "SOLENT_DICOM_WORKERS": "1",
        "SOLENT_TOKEN_SECRET": "jobs-serve-test-secret-0123456789abcdef",
        "SOLENT_AUDIT_KEY": "jobs-test audit key shared by the nodes",
    }
    settings = load_settings(environ=env, data_dir=tmp_path / "node")
    archive = build_archive(settings)
    archive.index.add_trust("ZZA", "Trust A")
    node = start_server(tmp_path / "node", extra_env=env)
    try:
        w = write_instance(tmp_path / "in" / "a.dcm", seed=5)
        assert archive.ingestor.ingest_file(w.path, WHO, Provenance(Channel.IMPORT)).ok
        deadline = time.monotonic() + 30
        while not blob_checks(archive.index, w.sop_instance_uid) and time.monotonic() < deadline:
            time.sleep(0.2)
        (check,) = blob_checks(archive.index, w.sop_instance_uid)
        assert check.ok
        metrics = httpx.get(node.base_url + "/metrics", headers=node.headers(), timeout=30).text
        assert 'solent_jobs{status="succeeded",task="verify_blob"} 1.0' in metrics
        assert 'solent_jobs_feed_backlog{consumer="fixity"} 0.0' in metrics
        assert 'solent_jobs_run_total{outcome="done",task="verify_blob"} 1.0' in metrics
    finally:
        assert node.stop() == 0
        archive.close()
