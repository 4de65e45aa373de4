"""Liveness and readiness (issue 16): what a load balancer asks each node."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from solent.app import Archive, build_archive
from solent.protocols.http import create_app
from solent.serve_process import serve_env, start_serve, stop_serve
from solent.settings import load_settings


def test_ready_when_index_store_and_schema_are_fine(archive: Archive) -> None:
    client = TestClient(create_app(archive))
    r = client.get("/health/ready")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "ready",
        "checks": {"index": "ok", "schema": "head", "store": "ok", "node": "serving"},
    }


def test_draining_node_is_not_ready_but_still_alive(archive: Archive) -> None:
    client = TestClient(create_app(archive))
    archive.services.health.begin_shutdown()
    r = client.get("/health/ready")
    assert r.status_code == 503
    assert r.json()["checks"]["node"] == "draining"
    assert client.get("/health").status_code == 200


def test_schema_behind_is_not_ready_and_ahead_is(archive: Archive) -> None:
    """An un-upgraded database keeps the node out; one a newer release already upgraded keeps
    it in (rolling upgrade: migrations are written so the previous release tolerates them)."""
    client = TestClient(create_app(archive))
    with archive.index.engine.begin() as conn:
        (current,) = conn.execute(text("SELECT version_num FROM alembic_version")).one()
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00d_newer_release'"))
    r = client.get("/health/ready")
    assert (r.status_code, r.json()["checks"]["schema"]) == (200, "ahead")
    with archive.index.engine.begin() as conn:
        conn.execute(text("DELETE FROM alembic_version"))
    r = client.get("/health/ready")
    assert (r.status_code, r.json()["checks"]["schema"]) == (503, "behind")
    with archive.index.engine.begin() as conn:
        conn.execute(text("INSERT INTO alembic_version VALUES (:v)"), {"v": current})
    assert client.get("/health/ready").status_code == 200


def test_sigterm_drains_readiness_first_then_stops_cleanly(tmp_path: Path) -> None:
    """Behind a balancer: after SIGTERM the node answers 503 on /health/ready (so the balancer
    takes it out) while still serving, and exits 0 once the drain period is over."""
    env = serve_env(tmp_path / "var", {"SOLENT_SHUTDOWN_DRAIN_SECONDS": "3"})
    proc, ports = start_serve(env)
    base = f"http://127.0.0.1:{ports['http']}"
    try:
        assert httpx.get(base + "/health/ready", timeout=10).status_code == 200
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        ready = httpx.get(base + "/health/ready", timeout=10)
        assert ready.status_code == 503 and ready.json()["checks"]["node"] == "draining"
        assert httpx.get(base + "/health", timeout=10).status_code == 200  # still serving
        assert proc.wait(timeout=60) == 0
        assert time.monotonic() - started >= 2.5  # it waited for the drain period
    finally:
        stop_serve(proc)


def test_a_node_of_the_previous_release_starts_on_a_schema_a_newer_release_upgraded(
    tmp_path: Path,
) -> None:
    """Rolling upgrade: the database already carries a revision this code does not know; the
    node neither fails to start (Alembic would not find the revision) nor touches the schema,
    and it is ready."""
    settings = load_settings(environ={}, data_dir=tmp_path / "var")
    first = build_archive(settings)
    with first.index.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00d_newer_release'"))
    first.close()
    again = build_archive(settings)  # migrates at start, as `solent serve` does
    try:
        with again.index.engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        assert version == "f00d_newer_release"
        state = again.services.health.ready()
        assert state.ready and state.checks["schema"] == "ahead"
    finally:
        again.close()


def test_a_hung_blob_store_fails_readiness_in_bounded_time_and_starves_nothing(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3 endpoint that accepts connections but never answers: the balancer checks every
    300 ms, and each readiness check used to wait for the store's own timeouts (minutes),
    one HTTP thread each, until the node's thread pool was gone and not even /health or a
    query answered. Now a check answers 503 within its bound, probes of a store that has not
    answered yet are not repeated, and the node comes back when the store does."""
    health = archive.services.health
    health.check_timeout = 0.3
    release = threading.Event()
    calls: list[str] = []
    real_exists = archive.store.exists

    def hung_exists(key: str) -> bool:
        calls.append(key)
        release.wait(30)
        return real_exists(key)

    monkeypatch.setattr(archive.store, "exists", hung_exists)
    client = TestClient(create_app(archive))
    try:
        for _ in range(20):
            started = time.monotonic()
            r = client.get("/health/ready")
            assert time.monotonic() - started < 2.0
            assert r.status_code == 503
            assert r.json()["checks"]["store"] == "unavailable: no answer within 0.3 s"
            assert r.json()["checks"]["index"] == "ok"
        assert len(calls) == 1  # one probe in flight at a time, not one thread per check
        assert client.get("/health").status_code == 200
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while client.get("/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "readiness did not come back with the store"
        time.sleep(0.05)


def test_a_hung_database_fails_liveness_in_bounded_time(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    health = archive.services.health
    health.check_timeout = 0.3
    release = threading.Event()
    calls: list[int] = []
    real_read = archive.index.read

    @contextlib.contextmanager
    def hung_read() -> Iterator[Any]:
        calls.append(1)
        release.wait(30)
        with real_read() as conn:
            yield conn

    monkeypatch.setattr(archive.index, "read", hung_read)
    client = TestClient(create_app(archive))
    try:
        for _ in range(10):
            started = time.monotonic()
            assert client.get("/health").status_code == 503
            assert time.monotonic() - started < 2.0
        assert len(calls) == 1
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
