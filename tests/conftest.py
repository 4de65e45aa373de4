"""Shared fixtures. A missing peer skips its tests locally and fails them in CI
(SOLENT_REQUIRE_PEERS=1), so a green CI always means the real peer was exercised."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from solent.app import Archive, build_archive
from solent.domain.principal import SYSTEM
from solent.serve_process import ServeStartError, serve_env, solent_program, start_serve, stop_serve
from solent.settings import Settings, load_settings


def _guard_pynetdicom_requestors() -> None:
    """Every association a test opens with pynetdicom gets the guard Solent's own associations
    have (net.responses_to_the_waiting_sender): pynetdicom's reactor can take the response its
    sending thread waits for, so on a loaded machine a test's C-MOVE or C-STORE could wait out
    the DIMSE timeout for an answer the archive had sent (a peer's bug, not the archive's)."""
    from pynetdicom.ae import ApplicationEntity

    from solent.protocols.dimse.net import responses_to_the_waiting_sender

    plain = ApplicationEntity.associate

    def associate(self: ApplicationEntity, *args: Any, **kwargs: Any) -> Any:
        return responses_to_the_waiting_sender(plain(self, *args, **kwargs))

    ApplicationEntity.associate = associate  # type: ignore[method-assign]


_guard_pynetdicom_requestors()

REPO = Path(__file__).resolve().parents[1]
REQUIRE_PEERS = os.environ.get("SOLENT_REQUIRE_PEERS") == "1"


def require(available: bool, what: str) -> None:
    """Skip (locally) or fail (CI) when a real peer or shared data is missing."""
    if available:
        return
    if REQUIRE_PEERS:
        pytest.fail(f"required peer missing in CI: {what}")
    pytest.skip(f"{what} not available (CI sets SOLENT_REQUIRE_PEERS=1 and installs it)")


@pytest.fixture(scope="module", autouse=True)
def no_event_loop_left_running() -> Iterator[None]:
    """Fails the module that leaves an asyncio loop running in pytest's thread (e.g. a
    Playwright sync session kept open): otherwise whichever module pytest-xdist runs next in
    that process fails at asyncio.run(), far from the cause."""
    yield
    assert asyncio._get_running_loop() is None, "this module left an asyncio event loop running"


def shared_dir() -> Path:
    return Path(os.environ.get("SOLENT_SHARED_DIR", REPO.parent / "shared"))


def require_corpus() -> Path:
    """The shared DICOM corpus: skips (locally) or fails (CI) when it is absent, so a fresh
    clone without ../shared passes `make test` (issue 11 part 8)."""
    d = shared_dir() / "dicom-corpus"
    require((d / "MANIFEST.tsv").is_file(), f"the shared DICOM corpus at {d}")
    return d


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    return require_corpus()


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"the `{name}` program")
    assert path is not None
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(environ={}, data_dir=tmp_path / "var")


@pytest.fixture
def archive(settings: Settings) -> Iterator[Archive]:
    a = build_archive(settings)
    a.index.add_trust("ZZA", "Trust A")
    a.index.add_trust("ZZB", "Trust B")
    yield a
    a.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("SOLENT_TEST_POSTGRES_URL", "")
    require(bool(url), "PostgreSQL (set SOLENT_TEST_POSTGRES_URL)")
    return url


def http_headers(archive: Archive) -> dict[str, str]:
    """Headers an authorised test client sends to an in-process app built on ``archive``.

    A bearer token of a test user with broad clinical access (see the security block at the end).
    """
    return _bearer_for_test_user(archive.index, archive.settings)


@dataclass
class RunningServer:
    proc: subprocess.Popen[str]
    ports: dict[str, Any]
    data_dir: Path
    env: dict[str, str]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def headers(self) -> dict[str, str]:
        """Headers an authorised client of this server sends (see http_headers)."""
        return _server_headers(self)

    def admin_headers(self) -> dict[str, str]:
        """Headers of a regional administrator of this server (see admin_headers)."""
        return _server_admin_headers(self)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SOLENT), *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=300,
        )

    def stop(self) -> int:
        return stop_serve(self.proc)


SOLENT = solent_program()


def start_server(
    data_dir: Path, extra_env: dict[str, str] | None = None, timeout: float = 60
) -> RunningServer:
    """Start `solent serve` with every port 0 and wait for its SOLENT_READY line."""
    env = serve_env(data_dir, extra_env)
    try:
        proc, ports = start_serve(env, timeout)
    except ServeStartError as exc:
        raise AssertionError(str(exc)) from None
    return RunningServer(proc, ports, data_dir, env)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A `solent serve` process on a fresh embedded archive with trusts ZZA and ZZB."""
    data = tmp_path / "srv"
    # In this process rather than by two `solent trust add` runs (~1.5 s of CPU each): the
    # archive is the same, and the CLI itself is tested in test_cli.
    prepared = build_archive(load_settings(environ={}, data_dir=data))
    try:
        for code in ("ZZA", "ZZB"):
            prepared.index.add_trust(code, f"Trust {code}")
    finally:
        prepared.close()
    srv = start_server(data)
    yield srv
    srv.stop()


# --- Backends for contract and interop tests (issue 2): an S3 server, fresh PostgreSQL databases.
# `s3_server` is one `moto_server` subprocess per session (real HTTP on 127.0.0.1, port 0);
# `s3_env` names a fresh, not yet created bucket per test (the archive creates it on start);
# `s3_settings` is the matching Settings; `fresh_postgres_url` is a new database per test.


@dataclass
class S3Server:
    endpoint_url: str
    proc: subprocess.Popen[str]

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    import queue
    import re

    moto = Path(sys.executable).parent / "moto_server"
    require(moto.is_file(), "the `moto_server` program (pip install 'moto[server]')")
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 30
    seen: list[str] = []
    port = 0
    while not port and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if not line:
            break
        seen.append(line)
        found = re.search(r"Running on http://127\.0\.0\.1:(\d+)", line)
        port = int(found.group(1)) if found else 0
    if not port:
        proc.kill()
        raise AssertionError("moto_server did not start:\n" + "".join(seen[-20:]))
    yield S3Server(f"http://127.0.0.1:{port}", proc)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def s3_env(s3_server: S3Server) -> dict[str, str]:
    """SOLENT_* variables for an S3 store in a bucket of its own (not created yet)."""
    import uuid

    bucket = f"solent-test-{uuid.uuid4().hex[:16]}"
    return {
        "SOLENT_STORAGE_URL": f"s3://{bucket}/blobs",
        "SOLENT_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "SOLENT_S3_REGION": "us-east-1",
        "SOLENT_S3_ACCESS_KEY_ID": "testing",
        "SOLENT_S3_SECRET_ACCESS_KEY": "testing",
    }


@pytest.fixture
def s3_settings(s3_env: dict[str, str], tmp_path: Path) -> Settings:
    """Settings of an embedded archive whose blobs live in a fresh S3 bucket."""
    return load_settings(environ=s3_env, data_dir=tmp_path / "var")


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import psycopg
    from psycopg import sql

    name = f"solent_test_{uuid.uuid4().hex[:16]}"
    admin = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield urlunsplit(urlsplit(admin)._replace(path="/" + name))
    with psycopg.connect(admin, autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))


@pytest.fixture
def regional_pg_index(fresh_postgres_url: str) -> Iterator[Any]:
    """An index on a fresh PostgreSQL database with four trusts, ZZA to ZZD (identity graphs)."""
    from solent.index.sql import Index

    idx = Index(fresh_postgres_url)
    idx.migrate()
    for code in ("ZZA", "ZZB", "ZZC", "ZZD"):
        idx.add_trust(code, f"Trust {code}")
    try:
        yield idx
    finally:
        idx.close()


# --- end of backends for contract and interop tests (issue 2) -------------------------------


# --- Security (issue 6): the bearer token every HTTP test sends --------------------------------
# One test user per archive with broad clinical access: clinician, radiologist, MDT coordinator,
# integration, PACS administrator and auditor roles, holding a role at every registered trust
# (refreshed on each call, so trusts a test adds later are covered). It has no password (API
# tokens only); its short-lived bearer token is signed with the archive's own key.


@pytest.fixture
def reserved_port() -> Iterator[int]:
    """A loopback port held for the test: bound with SO_REUSEADDR and not listening, so no
    other process's bind(0) (a server on port 0) or outgoing connection takes it meanwhile,
    while a DCMTK tool (which sets SO_REUSEADDR) can still listen on it. A port that was only
    free when asked (bind, close) could be another test's by the time movescu listens: the
    archive's C-MOVE then went to that process and movescu waited for ever."""
    import socket

    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


TEST_USER = "test-user"
#: Every role but pacs_admin: an account holding it with these reads no patient data (issue 11),
#: so administration goes through TEST_ADMIN (a regional administrator) instead.
TEST_ROLES = ("clinician", "radiologist", "mdt_coordinator", "integration", "auditor")
TEST_ADMIN = "test-admin"
_server_indexes: dict[str, Any] = {}


def _bearer_for_test_user(index: Any, settings: Settings) -> dict[str, str]:
    from solent.compose import keyed_audit
    from solent.index import security as sec
    from solent.security.users import UserService

    # Written at the index level (no password, no audit record of the creation): a test
    # caller with every role that reads; administrators are TEST_ADMIN (admin_headers).
    users = UserService(index, settings, keyed_audit(index, settings))
    trusts = [t.code for t in index.list_trusts()]
    if not trusts:
        return {}  # no trust, no user: the request is refused (401) like any anonymous one
    primary = "ZZA" if "ZZA" in trusts else trusts[0]
    others = tuple(c for c in trusts if c != primary)
    row = users.get(TEST_USER)
    if row is None:
        import contextlib

        from solent.errors import AlreadyExists

        with contextlib.suppress(AlreadyExists):  # created concurrently by another thread
            sec.add_user(index, TEST_USER, primary, TEST_ROLES, None, others)
    elif set(row.trusts) != set(trusts):
        sec.update_user(index, TEST_USER, other_trusts=tuple(c for c in trusts if c != row.trust))
    return {"Authorization": "Bearer " + users.issue(TEST_USER, SYSTEM).token}


def admin_headers(archive: Archive) -> dict[str, str]:
    """Headers of a regional administrator (pacs_admin, no trust) of ``archive``."""
    return _bearer_for_test_admin(archive.index, archive.settings)


def _bearer_for_test_admin(index: Any, settings: Settings) -> dict[str, str]:
    import contextlib

    from solent.compose import keyed_audit
    from solent.errors import AlreadyExists
    from solent.index import security as sec
    from solent.security.users import UserService

    users = UserService(index, settings, keyed_audit(index, settings))
    if users.get(TEST_ADMIN) is None:
        with contextlib.suppress(AlreadyExists):  # created concurrently by another thread
            sec.add_user(index, TEST_ADMIN, None, ("pacs_admin",), None)
    return {"Authorization": "Bearer " + users.issue(TEST_ADMIN, SYSTEM).token}


def _server_index(server: RunningServer) -> tuple[Any, Settings]:
    from solent.index.sql import Index

    settings = load_settings(environ=server.env)
    url = settings.effective_database_url
    if url not in _server_indexes:
        _server_indexes[url] = Index(url)
    return _server_indexes[url], settings


def _server_admin_headers(server: RunningServer) -> dict[str, str]:
    return _bearer_for_test_admin(*_server_index(server))


def _server_headers(server: RunningServer) -> dict[str, str]:
    return _bearer_for_test_user(*_server_index(server))


# --- end of security (issue 6) ------------------------------------------------------------------
