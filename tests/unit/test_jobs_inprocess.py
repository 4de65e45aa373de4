"""Background jobs on the embedded SQLite index (issue 16): the change-feed consumers run the
same task functions in-process; a failing job is retried with backoff, and one that used all its
attempts is kept as failed in the index for `solent jobs list` and `solent jobs retry`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

import solent.jobs.queue
from solent.app import Archive, build_archive
from solent.cli import main
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.errors import InvalidInput, NotFound
from solent.index import schema as t
from solent.index.jobs import FeedEvent, blob_checks, failed_jobs
from solent.jobs import tasks
from solent.jobs.queue import COLLECTOR, InProcessQueue
from solent.jobs.tasks import CONSUMERS, Consumer, TaskContext
from solent.settings import Settings, load_settings
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
    assert runs == [written.sop_instance_uid] * 3  # two failures, then success
    assert queue.failed == 0


def test_a_consumer_waiting_out_a_retry_holds_up_no_other_and_stop_keeps_its_job(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreachable peer (an IAN recipient) puts one consumer into backoff; the others keep
    following the feed, and stopping the node mid-backoff leaves that job to run again."""
    unreachable: list[str] = []
    reachable: list[str] = []

    def down(ctx: TaskContext, sop_instance_uid: str) -> None:
        unreachable.append(sop_instance_uid)
        raise ConnectionRefusedError("peer down")

    def up(ctx: TaskContext, sop_instance_uid: str) -> None:
        reachable.append(sop_instance_uid)

    monkeypatch.setitem(tasks.TASKS, "down", down)
    monkeypatch.setitem(tasks.TASKS, "up", up)

    def jobs(task: str) -> Any:
        return lambda e: [(task, {"sop_instance_uid": e.sop_instance_uid})]

    stuck = Consumer("stuck-test", frozenset({"instance.stored"}), jobs("down"))
    free = Consumer("free-test", frozenset({"instance.stored"}), jobs("up"))
    queue = InProcessQueue(
        archive.index,
        archive.store,
        consumers=(stuck, free),
        poll_seconds=0.05,
        backoff_seconds=60.0,
    )
    written = store(archive, tmp_path / "in", 2)
    queue.start()
    try:
        deadline = time.monotonic() + 10
        while len(reachable) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(reachable) == sorted(w.sop_instance_uid for w in written)
        assert len(unreachable) == 1  # the first job of the stuck consumer, now in backoff
    finally:
        started = time.monotonic()
        queue.stop()
    assert time.monotonic() - started < 5  # stop did not wait out the 60 s backoff
    feed = queue.stats()["feed"]
    assert feed["free-test"]["backlog"] == 0
    assert feed["stuck-test"]["backlog"] == 2  # nothing acknowledged: it runs again next start


class Peer:
    """A task whose peer (a RIS, an IAN recipient) is down for the instances named in ``down``
    until it comes back; every run is counted."""

    def __init__(self, down: set[str]) -> None:
        self.down = down
        self.runs: list[str] = []

    def __call__(self, ctx: TaskContext, sop_instance_uid: str) -> None:
        self.runs.append(sop_instance_uid)
        if sop_instance_uid in self.down:
            raise ConnectionRefusedError(f"peer down\nwhile telling {sop_instance_uid}")


@pytest.fixture
def peer(monkeypatch: pytest.MonkeyPatch) -> Iterator[Peer]:
    p = Peer(set())
    monkeypatch.setitem(tasks.TASKS, "tell_peer", p)
    yield p


TELL = Consumer(
    "peer-test",
    frozenset({"instance.stored"}),
    lambda e: [("tell_peer", {"sop_instance_uid": e.sop_instance_uid})],
)


def _queue(archive: Archive, **kw: Any) -> InProcessQueue:
    return InProcessQueue(
        archive.index,
        archive.store,
        consumers=(TELL,),
        backoff_seconds=0.01,
        max_attempts=2,
        **kw,
    )


def test_a_job_that_used_all_its_attempts_is_kept_as_failed_and_the_feed_moves_on(
    settings: Settings, tmp_path: Path, peer: Peer
) -> None:
    archive = build_archive(settings)
    archive.index.add_trust("ZZA", "Trust A")
    first, second = store(archive, tmp_path / "in", 2)
    peer.down = {first.sop_instance_uid}
    queue = _queue(archive)
    assert queue.dispatch() == 2
    assert peer.runs == [first.sop_instance_uid] * 2 + [second.sop_instance_uid]
    assert queue.stats()["feed"]["peer-test"]["backlog"] == 0  # later events ran
    assert queue.dispatch() == 0  # and the failed one is not run again by itself
    (row,) = queue.list_jobs("failed", 50)
    assert (row.task, row.status, row.attempts) == ("tell_peer", "failed", 2)
    assert row.args == {"sop_instance_uid": first.sop_instance_uid}
    assert queue.stats()["jobs"] == {"tell_peer": {"failed": 1}}
    archive.close()

    # The record is in the index: it outlives the process.
    reopened = build_archive(settings)
    try:
        (kept,) = failed_jobs(reopened.index, None, 50)
        assert kept.id == row.id and kept.consumer == "peer-test" and kept.status == "failed"
        assert kept.last_error == "ConnectionRefusedError: peer down"  # first line only
        assert kept.first_failed_at <= kept.last_failed_at
        with reopened.index.read() as conn:
            seqs = conn.execute(
                t.change_feed.select().where(
                    t.change_feed.c.sop_instance_uid == first.sop_instance_uid
                )
            ).all()
        assert kept.seq in {r.seq for r in seqs}
    finally:
        reopened.close()


def test_a_crash_before_the_cursor_moves_loses_no_failed_job(
    archive: Archive, tmp_path: Path, peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure is recorded in the transaction that moves the cursor: a crash before it
    commits leaves neither (the batch runs again); after it, both."""
    (written,) = store(archive, tmp_path / "in", 1)
    peer.down = {written.sop_instance_uid}

    def power_cut(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("power cut")

    with monkeypatch.context() as m:
        m.setattr(solent.jobs.queue, "advance", power_cut)
        with pytest.raises(RuntimeError, match="power cut"):
            _queue(archive).dispatch()
    assert failed_jobs(archive.index, None, 50) == []  # rolled back with the cursor ...
    queue = _queue(archive)  # ... so the next start runs the batch again
    assert queue.stats()["feed"]["peer-test"]["backlog"] == 1
    queue.dispatch()
    assert len(peer.runs) == 4
    (kept,) = failed_jobs(archive.index, None, 50)
    assert kept.args == {"sop_instance_uid": written.sop_instance_uid}
    assert queue.stats()["feed"]["peer-test"]["backlog"] == 0


def test_retry_runs_a_failed_job_again_in_the_serving_nodes_follower(
    archive: Archive, tmp_path: Path, peer: Peer
) -> None:
    (written,) = store(archive, tmp_path / "in", 1)
    peer.down = {written.sop_instance_uid}
    queue = _queue(archive, poll_seconds=0.02)
    queue.dispatch()
    (row,) = queue.list_jobs("failed", 50)
    COLLECTOR.queue = queue
    try:
        metrics = generate_latest().decode()
        assert "solent_jobs_failed 1.0" in metrics  # what monitoring alerts on
        assert 'solent_jobs{status="failed",task="tell_peer"} 1.0' in metrics
    finally:
        COLLECTOR.queue = None
    with pytest.raises(NotFound, match="no job 999"):
        queue.retry(999)

    peer.down = set()  # the peer is fixed; the operator retries
    queue.start()
    try:
        queue.retry(row.id)
        deadline = time.monotonic() + 5
        while queue.list_jobs("succeeded", 50) == [] and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        queue.stop()
    (done,) = queue.list_jobs(None, 50)
    assert (done.id, done.status, done.attempts) == (row.id, "succeeded", 3)
    assert peer.runs == [written.sop_instance_uid] * 3
    assert queue.stats()["jobs"] == {"tell_peer": {"succeeded": 1}}
    with pytest.raises(InvalidInput, match=f"job {row.id} is succeeded: only failed jobs"):
        queue.retry(row.id)


def test_a_retried_job_that_fails_again_is_failed_again_with_its_new_error(
    archive: Archive, tmp_path: Path, peer: Peer
) -> None:
    """As on PostgreSQL, a retry is one more run: the job's attempts were used."""
    (written,) = store(archive, tmp_path / "in", 1)
    peer.down = {written.sop_instance_uid}
    queue = _queue(archive)
    queue.dispatch()
    (row,) = queue.list_jobs("failed", 50)
    queue.retry(row.id)
    assert [r.status for r in queue.list_jobs(None, 50)] == ["todo"]
    assert queue.dispatch() == 1
    (again,) = queue.list_jobs("failed", 50)
    assert (again.id, again.attempts) == (row.id, 3)
    assert len(peer.runs) == 3


def test_a_retry_left_running_by_a_dead_process_is_run_at_the_next_start(
    archive: Archive, tmp_path: Path, peer: Peer
) -> None:
    (written,) = store(archive, tmp_path / "in", 1)
    peer.down = {written.sop_instance_uid}
    queue = _queue(archive)
    queue.dispatch()
    (row,) = queue.list_jobs("failed", 50)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    with archive.index.engine.begin() as conn:
        conn.execute(
            t.failed_job.update()
            .where(t.failed_job.c.pk == row.id)
            .values(status="doing", worker=f"{socket.gethostname()}:{dead.stdout.strip()}")
        )
    peer.down = set()
    assert queue.recover_stalled() == 1
    queue.dispatch()
    assert [r.status for r in queue.list_jobs(None, 50)] == ["succeeded"]


def test_jobs_cli_on_sqlite_lists_and_retries_failed_jobs(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    peer: Peer,
) -> None:
    """The operator's view of the embedded default is PostgreSQL's: `jobs list --status
    failed`, `jobs retry ID` (then a worker runs it), `jobs stats`."""
    for key in [k for k in os.environ if k.startswith("SOLENT_")]:
        monkeypatch.delenv(key)
    env = {
        "SOLENT_DATA_DIR": str(tmp_path / "var"),
        "SOLENT_JOBS_CONSUMERS": "fixity",
        "SOLENT_JOBS_MAX_ATTEMPTS": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(tasks.TASKS, "verify_blob", peer)
    archive = build_archive(load_settings(environ=env))
    archive.index.add_trust("ZZA", "Trust A")
    first, _ = store(archive, tmp_path / "in", 2)
    archive.close()
    peer.down = {first.sop_instance_uid}

    def solent(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    assert solent("jobs", "work", "--until-idle")[0] == 0
    code, out, _ = solent("jobs", "list", "--status", "failed", "--json")
    assert code == 0
    (failed,) = json.loads(out)
    assert (failed["task"], failed["status"], failed["attempts"]) == ("verify_blob", "failed", 1)
    assert failed["args"] == {"sop_instance_uid": first.sop_instance_uid}
    code, out, _ = solent("jobs", "list")
    assert out.split() == [
        str(failed["id"]),
        "failed",
        "1",
        "verify_blob",
        '{"sop_instance_uid":',
        f'"{first.sop_instance_uid}"}}',
    ]
    code, out, _ = solent("jobs", "stats")
    assert "queue: in-process" in out
    assert "verify_blob: failed 1" in out
    assert "consumer fixity: at event 2 of 2 (backlog 0)" in out

    assert solent("jobs", "retry", "4242")[1:] == ("", "solent: no job 4242\n")
    # An id no database key can be, or a limit none can, is refused (it was a traceback).
    for huge in ("-5", str(2**63), "9" * 30):
        assert solent("jobs", "retry", huge)[1:] == ("", f"solent: no job {huge}\n")
    for limit in ("0", "-1", "9" * 30):
        code, _, err = solent("jobs", "list", "--limit", limit)
        assert code == 2 and "the limit is 1 to 10000 jobs" in err
    peer.down = set()
    code, out, _ = solent("jobs", "retry", str(failed["id"]))
    assert (code, out) == (0, f"job {failed['id']} will run again\n")
    assert solent("jobs", "list", "--status", "failed", "--json")[1].strip() == "[]"
    assert solent("jobs", "work", "--until-idle")[0] == 0
    assert peer.runs.count(first.sop_instance_uid) == 2
    (done,) = json.loads(solent("jobs", "list", "--json")[1])
    assert (done["id"], done["status"]) == (failed["id"], "succeeded")
    code, _, err = solent("jobs", "retry", str(failed["id"]))
    assert code == 2 and "is succeeded: only failed jobs retry" in err
