"""A worker killed mid-job loses no work (issue 16): its job is taken back after the heartbeat
timeout (procrastinate's stalled-job support, checked by every worker) and another node runs it.

The first worker is made to hang inside the job for real: the blob it must read is swapped for a
named pipe nobody writes to, so opening it blocks, and the job sits in "doing" until the worker
is killed (SIGKILL: no clean shutdown, no chance to hand the job back).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from solent.app import build_archive
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.index.jobs import blob_checks
from solent.settings import load_settings
from tests.conftest import SOLENT
from tests.contract.synthetic import write_instance

WHO = Principal(PrincipalKind.IMPORTER, "test", "ZZA")
STALLED_SECONDS = 2.0


def _job_states(env: dict[str, str]) -> list[tuple[str, int]]:
    import psycopg

    with psycopg.connect(env["SOLENT_DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT status::text, attempts FROM procrastinate_jobs"
            " WHERE task_name = 'verify_blob' ORDER BY id"
        ).fetchall()
    return [(str(r[0]), int(r[1])) for r in rows]


def _wait(what: str, ok: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(ok) and ok():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_job_of_a_killed_worker_is_run_by_another_after_the_heartbeat_timeout(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    env = {
        "SOLENT_DATABASE_URL": fresh_postgres_url,
        "SOLENT_STORAGE_URL": f"file://{tmp_path / 'blobs'}",
        "SOLENT_JOBS_CONSUMERS": "fixity",
        "SOLENT_JOBS_POLL_SECONDS": "0.2",
        "SOLENT_JOBS_SETTLE_SECONDS": "1.0",
        "SOLENT_JOBS_STALLED_SECONDS": str(STALLED_SECONDS),
        "SOLENT_AUDIT_KEY": "stalled-jobs test audit key shared by the nodes",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    archive = build_archive(load_settings(environ=env, data_dir=tmp_path / "admin"))
    archive.index.add_trust("ZZA", "Trust A")

    def worker(name: str) -> subprocess.Popen[bytes]:
        # Its log goes to a file: a pipe nobody reads while the test runs fills and blocks it.
        with (tmp_path / f"{name}.log").open("wb") as log:
            return subprocess.Popen(
                [str(SOLENT), "jobs", "work"],
                env={**base, **env, "SOLENT_DATA_DIR": str(tmp_path / name)},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    first = worker("w1")
    second: subprocess.Popen[bytes] | None = None
    try:
        w = write_instance(tmp_path / "in" / "a.dcm", seed=3)
        assert archive.ingestor.ingest_file(w.path, WHO, Provenance(Channel.IMPORT)).ok
        digest = archive.index.instance_digest(w.sop_instance_uid)
        assert digest is not None
        blob = tmp_path / "blobs" / digest[1]
        shutil.move(blob, tmp_path / "kept")  # within the settle time: before the job exists
        os.mkfifo(blob)

        _wait("the first worker to start the job", lambda: _job_states(env) == [("doing", 0)])
        time.sleep(0.5)
        assert first.poll() is None and _job_states(env) == [("doing", 0)], "it hangs in the job"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = time.monotonic()
        blob.unlink()
        shutil.move(tmp_path / "kept", blob)

        second = worker("w2")
        _wait("another worker to take the job back and run it", lambda: blob_checks(archive.index))
        taken_back_after = time.monotonic() - killed_at
        (check,) = blob_checks(archive.index, w.sop_instance_uid)
        assert check.ok
        assert check.worker.endswith(f":{second.pid}"), check.worker
        # Not before the heartbeat timed out (its last beat was at most a third of it earlier).
        assert taken_back_after >= STALLED_SECONDS * 2 / 3, taken_back_after
        _wait("the job to be marked done", lambda: _job_states(env)[0][0] != "doing")
        assert _job_states(env) == [("succeeded", 2)]  # the killed run and the one that ended
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        archive.close()
    assert second.returncode == 0, (tmp_path / "w2.log").read_text()[-3000:]
