"""Live state across nodes on PostgreSQL (issue 16): LISTEN/NOTIFY between processes, and
access caches dropped on every node the moment access changes, not when their TTL runs out."""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from solent.app import build_archive
from solent.domain.principal import SYSTEM, Channel, Principal, PrincipalKind, Provenance
from solent.security.users import UserService
from solent.services.audit import AuditTrail
from solent.services.broadcast import ACCESS_CHANNEL, PostgresBroadcast
from solent.settings import load_settings
from tests.conftest import start_server
from tests.contract.synthetic import write_instance
from tests.interop.tcp_support import keepalive_seconds


def test_a_message_published_on_one_node_reaches_subscribers_on_another(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    build_archive(
        load_settings(environ={"SOLENT_DATABASE_URL": fresh_postgres_url}, data_dir=tmp_path)
    ).close()
    node1, node2 = PostgresBroadcast(fresh_postgres_url), PostgresBroadcast(fresh_postgres_url)
    got: queue.Queue[dict[str, Any]] = queue.Queue()
    access: queue.Queue[dict[str, Any]] = queue.Queue()
    try:
        node1.subscribe("mdt_room_42", got.put)
        node1.subscribe(ACCESS_CHANNEL, access.put)
        assert node1.listening.wait(10)
        node2.publish("mdt_room_42", {"event": "pointer", "x": 0.25, "y": 0.5})
        assert got.get(timeout=10) == {"event": "pointer", "x": 0.25, "y": 0.5}
        node2.publish("mdt_room_43", {"event": "not for room 42"})
        # The database announces access changes itself (triggers), whoever makes them.
        index_owner = build_archive(
            load_settings(environ={"SOLENT_DATABASE_URL": fresh_postgres_url}, data_dir=tmp_path)
        )
        index_owner.index.add_trust("ZZA", "Trust A")
        assert access.get(timeout=10) == {"table": "trust"}
        index_owner.close()
        assert got.empty()
    finally:
        node1.close()
        node2.close()


def test_revoked_access_takes_effect_at_once_on_a_node_holding_a_cached_grant(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    shared = {
        "SOLENT_DATABASE_URL": fresh_postgres_url,
        "SOLENT_TOKEN_SECRET": "broadcast-test-secret-0123456789abcdef",
        "SOLENT_AUDIT_KEY": "broadcast-test audit key shared by the nodes",
        "SOLENT_DICOMWEB_ACCESS_CACHE_SECONDS": "60",  # a grant would otherwise last a minute
        "SOLENT_DICOM_WORKERS": "1",
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

    node = start_server(tmp_path / "node2", extra_env=shared)
    try:
        url = f"{node.base_url}/dicomweb/studies/{w.study_uid}/metadata"
        first = httpx.get(url, headers=headers, timeout=30)
        assert first.status_code == 200, first.text  # granted, and remembered for 60 s
        # An administrator on another node takes trust ZZB away from the user.
        users.set_other_trusts(SYSTEM, "clin", ())
        deadline = time.monotonic() + 10
        status = 200
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            status = httpx.get(url, headers=headers, timeout=30).status_code
        assert status == 404  # refused within seconds: now answers like an unknown study
    finally:
        node.stop()
        admin.close()


def test_after_a_lost_connection_nothing_published_once_the_resync_arrives_is_missed(
    fresh_postgres_url: str,
) -> None:
    """A subscriber told to resync reloads what it shows (an MDT room its state, caches clear);
    whatever another node publishes from then on must reach it. The listener used to announce
    the resync before it LISTENed again, so a change made during the reload was never heard."""
    node1, node2 = PostgresBroadcast(fresh_postgres_url), PostgresBroadcast(fresh_postgres_url)
    got: queue.Queue[dict[str, Any]] = queue.Queue()

    def on_message(payload: dict[str, Any]) -> None:
        got.put(payload)
        if payload.get("resync"):  # reloading; meanwhile another node changes the room
            node2.publish("mdt_room_7", {"event": "changed during the reload"})

    try:
        node1.subscribe("mdt_room_7", on_message)
        assert node1.listening.wait(10)
        with psycopg.connect(fresh_postgres_url, autocommit=True) as admin:
            dropped = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
            ).fetchone()
        assert dropped is not None and dropped[0] == 1
        assert got.get(timeout=15) == {"resync": True}
        assert got.get(timeout=10) == {"event": "changed during the reload"}
    finally:
        node1.close()
        node2.close()


def test_the_listening_connection_is_kept_alive_and_checked_often(
    fresh_postgres_url: str,
) -> None:
    """The listening connection is idle between notifications. A NAT or firewall between a node
    and PostgreSQL drops idle flows silently (minutes), and the node would then hear nothing
    more, with nothing to tell it so: MDT rooms out of step, caches on their TTL, for good. Its
    TCP keepalive probes every 30 s keep such a flow alive and find a dead one within a
    minute (the system default waits two hours)."""
    node = PostgresBroadcast(fresh_postgres_url)
    try:
        node.subscribe("mdt_room_9", lambda _payload: None)
        assert node.listening.wait(10)
        with psycopg.connect(fresh_postgres_url, autocommit=True) as admin:
            row = admin.execute(
                "SELECT client_port FROM pg_stat_activity "
                "WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
            ).fetchone()
        assert row is not None
        due = keepalive_seconds(int(row[0]))
        assert due is not None and due <= 30, due
    finally:
        node.close()
