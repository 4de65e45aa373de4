"""Pooled PostgreSQL connections without a ping per checkout (issue 16): a connection the
server dropped costs a query nothing (retried once on a fresh one), and an idle one is
pinged before use, so a restarted database does not fail the requests that follow."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psycopg
import pytest

from solent.domain.attributes import Level
from solent.domain.matching import parse_query
from solent.domain.principal import Principal, PrincipalKind
from solent.index import sql as index_sql
from solent.index.sql import Index
from solent.services.access import AccessService
from solent.services.audit import AuditTrail
from solent.services.query import QueryService
from tests.conftest import start_server
from tests.interop.tcp_support import keepalive_seconds

NODE = Principal(PrincipalKind.NODE, "RECONNECT_ZZA", "ZZA")


def _drop_connections(url: str) -> int:
    """Terminate every server process of this database but ours (as a restart would)."""
    admin = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(admin, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def _audited(index: Index) -> int:
    with index.read() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM audit_log").scalar_one())


def test_a_query_on_a_dropped_connection_is_retried_once(fresh_postgres_url: str) -> None:
    index = Index(fresh_postgres_url)
    try:
        index.migrate()
        index.add_trust("ZZA", "Trust A")
        query = QueryService(index, AccessService(index, AuditTrail(index)))
        study = parse_query(Level.STUDY, {})
        query.find(NODE, study, limit=10, max_results=100)  # the pool holds a used connection
        before = _audited(index)
        assert _drop_connections(fresh_postgres_url) >= 1
        # In use a moment ago, so not pinged: the statement fails, the query runs again.
        assert query.find(NODE, study, limit=10, max_results=100).rows == []
        assert _audited(index) == before + 1  # one record: the failed try committed nothing
    finally:
        index.close()


def test_an_idle_connection_is_pinged_before_use(
    fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = Index(fresh_postgres_url)
    try:
        index.migrate()
        index.add_trust("ZZA", "Trust A")
        assert [t.code for t in index.list_trusts()] == ["ZZA"]
        monkeypatch.setattr(index_sql, "IDLE_PING_S", 0.0)  # every pooled connection is "idle"
        assert _drop_connections(fresh_postgres_url) >= 1
        assert [t.code for t in index.list_trusts()] == ["ZZA"]  # pinged, replaced, answered
    finally:
        index.close()


def test_pooled_connections_are_kept_alive_and_checked_often(fresh_postgres_url: str) -> None:
    """A NAT or firewall between a node and PostgreSQL drops idle flows silently; a pooled
    connection idle past that would hang its next statement for minutes. Keepalive probes
    every 30 s keep the flow (the system default waits two hours)."""
    index = Index(fresh_postgres_url)
    try:
        with index.read() as conn:
            port = conn.exec_driver_sql(
                "SELECT client_port FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            ).scalar_one()
            due = keepalive_seconds(int(port))
        assert due is not None and due <= 30, due
    finally:
        index.close()


def test_every_connection_of_a_running_node_is_kept_alive(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    """The pool, the broadcast listener and the background jobs' own pool (procrastinate) of a
    real `solent serve`: each sends keepalives every 30 s."""
    server = start_server(
        tmp_path / "node",
        extra_env={
            "SOLENT_DATABASE_URL": fresh_postgres_url,
            "SOLENT_JOBS_CONSUMERS": "fixity",
            "SOLENT_AUDIT_KEY": "keepalive test audit key of the node",
        },
    )
    try:
        assert httpx.get(server.base_url + "/health/ready", timeout=30).status_code == 200
        time.sleep(2)  # the jobs worker has connected
        with psycopg.connect(fresh_postgres_url, autocommit=True) as admin:
            rows = admin.execute(
                "SELECT client_port, application_name, left(query, 40) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND client_port IS NOT NULL"
            ).fetchall()
        assert len(rows) >= 3, rows  # pool, listener, jobs
        due = {row: keepalive_seconds(int(row[0])) for row in rows}
        assert all(d is not None and d <= 30 for d in due.values()), due
    finally:
        server.stop()
