"""HTTP worker processes of one node (SOLENT_HTTP_WORKERS, issue 16) on PostgreSQL: every
process answers on the one port, each drops its cached access decisions the moment access
changes (the database's broadcast), and the node stops with all of them."""

from __future__ import annotations

import contextlib
import http.client
import os
import time
from collections import Counter
from pathlib import Path

import httpx

from solent.app import build_archive
from solent.domain.principal import SYSTEM, Channel, Principal, PrincipalKind, Provenance
from solent.security.users import UserService
from solent.services.audit import AuditTrail
from solent.settings import load_settings
from tests.conftest import start_server
from tests.contract.synthetic import write_instance


def _workers_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(c) for c in f.read().split()]
    out = []
    for child in children:
        with open(f"/proc/{child}/cmdline", "rb") as f:
            if b"solent.http_workers" in f.read():
                out.append(child)
    return out


def _holder(port: int, conn: http.client.HTTPConnection, pids: list[int]) -> int:
    """The process (of ``pids``) holding the server end of an answered keep-alive connection:
    /proc/net/tcp names the socket, /proc/<pid>/fd its owner."""
    client_port = conn.sock.getsockname()[1]
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    inodes = {
        f"socket:[{r[9]}]"
        for r in rows
        if int(r[1].split(":")[1], 16) == port and int(r[2].split(":")[1], 16) == client_port
    }
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    return pid
    raise AssertionError("no process of the node holds the connection")


def _serving_pid(port: int, headers: dict[str, str], pids: list[int]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/health", headers=headers)
        conn.getresponse().read()
        return _holder(port, conn, pids)
    finally:
        conn.close()


def _opened_at_once(port: int, count: int) -> list[http.client.HTTPConnection]:
    """``count`` keep-alive connections opened together (as a viewer or a balancer does),
    each answered once."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(count)]
    for conn in conns:
        conn.connect()
    for conn in conns:
        conn.request("GET", "/health")
    for conn in conns:
        conn.getresponse().read()
    return conns


def _fresh_get(url: str, headers: dict[str, str]) -> httpx.Response:
    """One request on its own connection: the kernel hands each to any of the processes."""
    with httpx.Client(timeout=30) as client:
        return client.get(url, headers={**headers, "Connection": "close"})


def test_every_http_process_answers_and_forgets_revoked_access_at_once(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    shared = {
        "SOLENT_DATABASE_URL": fresh_postgres_url,
        "SOLENT_TOKEN_SECRET": "http-workers-test-secret-0123456789abcdef",
        "SOLENT_AUDIT_KEY": "http-workers-test audit key shared by the processes",
        "SOLENT_DICOMWEB_ACCESS_CACHE_SECONDS": "60",  # a grant would otherwise last a minute
        "SOLENT_DICOM_WORKERS": "1",
        "SOLENT_HTTP_WORKERS": "3",
    }
    settings = load_settings(environ=shared, data_dir=tmp_path / "admin")
    admin = build_archive(settings)
    admin.index.add_trust("ZZA", "Trust A")
    admin.index.add_trust("ZZB", "Trust B")
    w = write_instance(tmp_path / "in" / "b.dcm", patient_id="B1")
    who = Principal(PrincipalKind.IMPORTER, "test", "ZZB")
    assert admin.ingestor.ingest_file(w.path, who, Provenance(Channel.IMPORT)).ok
    users = UserService(admin.index, settings, AuditTrail(admin.index))
    users.add(SYSTEM, "clin", "ZZA", ("clinician",), None, ("ZZB",))
    headers = {"Authorization": "Bearer " + users.issue("clin", SYSTEM).token}

    node = start_server(tmp_path / "node", extra_env=shared)
    try:
        workers = _workers_of(node.proc.pid)
        assert len(workers) == 2  # and the node itself: three processes on the port
        port = int(node.ports["http"])
        pids = [node.proc.pid, *workers]
        serving = {_serving_pid(port, headers, pids) for _ in range(60)}
        assert len(serving) >= 2  # connections one after another: spread over the processes
        # Opened at once, connections are shared out (solent.http_accept), not all taken by
        # whichever process woke first: each of the three holds some of the nine.
        together = _opened_at_once(port, 9)
        try:
            held = Counter(_holder(port, conn, pids) for conn in together)
            assert sorted(held) == sorted(pids) and min(held.values()) >= 2, held
        finally:
            for conn in together:
                conn.close()
        url = f"{node.base_url}/dicomweb/studies/{w.study_uid}/metadata"
        qido = f"{node.base_url}/dicomweb/studies?PatientID=B1&IssuerOfPatientID=ZZB"
        # Enough fresh connections that every process answers some (and caches the grant).
        for _ in range(30):
            assert _fresh_get(url, headers).status_code == 200
            found = _fresh_get(qido, headers)
            assert found.status_code == 200 and len(found.json()) == 1
        users.set_other_trusts(SYSTEM, "clin", ())  # trust ZZB taken away, on another "node"
        deadline = time.monotonic() + 10
        while _fresh_get(url, headers).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        # From now on no process may answer from a cached grant: 30 connections, all refused.
        statuses = {_fresh_get(url, headers).status_code for _ in range(30)}
        assert statuses == {404}
        unseen = _fresh_get(qido, headers)
        assert unseen.status_code in (200, 204) and not (unseen.content and unseen.json())
    finally:
        assert node.stop() == 0
        admin.close()
    for pid in workers:  # the workers stopped with the node
        assert not Path(f"/proc/{pid}").exists() or b"zombie" in _state(pid)


def _state(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            return f.read().lower()
    except OSError:
        return b"zombie"
