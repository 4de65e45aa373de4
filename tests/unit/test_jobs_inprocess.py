"""Background jobs on the embedded SQLite index (issue 16): the change-feed consumers run the
same task functions in-process; a failing job is retried with backoff."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from solent.app import Archive, build_archive
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.index.jobs import FeedEvent, blob_checks
from solent.jobs import tasks
from solent.jobs.queue import InProcessQueue
from solent.jobs.tasks import CONSUMERS, Consumer, TaskContext
from solent.settings import load_settings
from tests.conftest import SOLENT
from tests.contract.synthetic import Written, write_instance

WHO = Principal(PrincipalKind.IMPORTER, "test", "ZZA")


def store(archive: Archive, directory: Path, count: int) -> list[Written]:
    written = [write_instance(directory / f"{i}.dcm", seed=i) for i in range(count)]
    for w in written:
        assert archive.ingestor.ingest_file(w.path, WHO, Provenance(Channel.IMPORT)).ok
    return written


def test_fixity_checks_every_stored_blob_once_and_flags_a_corrupted_one(
    archive: Archive, tmp_path: Path
) -> None:
    written = store(archive, tmp_path / "in", 3)
    # Damage one stored blob behind the archive's back (same length, different bytes).
    digest = archive.index.instance_digest(written[1].sop_instance_uid)
    assert digest is not None
    blob = archive.settings.data_dir / "blobs" / digest[1]
    damaged = bytearray(blob.read_bytes())
    damaged[-1] ^= 0xFF
    blob.write_bytes(bytes(damaged))

    queue = InProcessQueue(archive.index, archive.store, consumers=CONSUMERS)
    assert queue.dispatch() == 3
    assert queue.dispatch() == 0  # the cursor moved: nothing is checked twice
    checks = {c.sop_instance_uid: c for c in blob_checks(archive.index)}
    assert len(blob_checks(archive.index)) == 3
    assert checks[written[0].sop_instance_uid].ok
    assert checks[written[2].sop_instance_uid].ok
    bad = checks[written[1].sop_instance_uid]
    assert not bad.ok and bad.detail.startswith("digest ")
    assert queue.stats()["feed"]["fixity"]["backlog"] == 0
    # /metrics of a node running the queue: the consumer's backlog and the jobs run.
    queue.start()
    queue.stop()
    metrics = generate_latest().decode()
    assert 'solent_jobs_feed_backlog{consumer="fixity"} 0.0' in metrics
    assert 'solent_jobs_run_total{outcome="done",task="verify_blob"}' in metrics


def test_a_failing_job_is_retried_with_backoff_then_done(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[str] = []

    def flaky(ctx: TaskContext, sop_instance_uid: str) -> None:
        runs.append(sop_instance_uid)
        if len(runs) < 3:
            raise OSError("store unreachable")

    monkeypatch.setitem(tasks.TASKS, "flaky", flaky)

    def jobs(event: FeedEvent) -> list[tuple[str, dict[str, Any]]]:
        return [("flaky", {"sop_instance_uid": event.sop_instance_uid})]

    consumer = Consumer("flaky-test", frozenset({"instance.stored"}), jobs)
    (written,) = store(archive, tmp_path / "in", 1)
    queue = InProcessQueue(
        archive.index, archive.store, consumers=(consumer,), backoff_seconds=0.01
    )
    assert queue.dispatch() == 1
    assert runs == [written.sop_instance_uid] and queue.retries_waiting == 1
    while queue.retries_waiting:  # tried again once due, by the following dispatches
        time.sleep(0.01)
        queue.dispatch()
    assert runs == [written.sop_instance_uid] * 3  # two failures, then success
    assert queue.failed == 0


def test_a_failing_job_does_not_hold_back_the_jobs_after_it(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the one thread slept through a failed job's backoff (2, 4, 8 ... s) before the
    next job ran, so a notify node that was down delayed every other study's notification
    by minutes."""
    runs: list[str] = []
    first: list[str] = []

    def down_for_the_first(ctx: TaskContext, sop_instance_uid: str) -> None:
        runs.append(sop_instance_uid)
        if not first or sop_instance_uid == first[0]:
            first[:] = [sop_instance_uid]
            raise OSError("node down")

    monkeypatch.setitem(tasks.TASKS, "down", down_for_the_first)

    def jobs(event: FeedEvent) -> list[tuple[str, dict[str, Any]]]:
        return [("down", {"sop_instance_uid": event.sop_instance_uid})]

    consumer = Consumer("down-test", frozenset({"instance.stored"}), jobs)
    queue = InProcessQueue(
        archive.index, archive.store, consumers=(consumer,), backoff_seconds=20.0, max_attempts=2
    )
    store(archive, tmp_path / "in", 2)
    started = time.monotonic()
    assert queue.dispatch() == 2
    assert time.monotonic() - started < 10
    assert len(runs) == 2 and queue.retries_waiting == 1 and queue.failed == 0


def test_jobs_cli_on_sqlite_reports_the_feed_and_refuses_to_list(tmp_path: Path) -> None:
    env = {"SOLENT_DATA_DIR": str(tmp_path / "var"), "SOLENT_JOBS_CONSUMERS": "fixity"}
    archive = build_archive(load_settings(environ=env))
    archive.index.add_trust("ZZA", "Trust A")
    store(archive, tmp_path / "in", 2)
    archive.close()
    run_env = {"PATH": "/usr/bin:/bin", **env}
    done = subprocess.run(
        [str(SOLENT), "jobs", "work", "--until-idle"], env=run_env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    stats = subprocess.run(
        [str(SOLENT), "jobs", "stats"], env=run_env, capture_output=True, text=True
    )
    assert stats.returncode == 0, stats.stderr
    assert "queue: in-process" in stats.stdout
    assert "consumer fixity: at event 2 of 2 (backlog 0)" in stats.stdout
    listed = subprocess.run(
        [str(SOLENT), "jobs", "list"], env=run_env, capture_output=True, text=True
    )
    assert listed.returncode != 0
    assert "run in-process" in listed.stderr
