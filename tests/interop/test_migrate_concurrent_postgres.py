"""Nodes started at once on a new (or not yet upgraded) PostgreSQL database (issue 16).

Each node migrates at start-up under one advisory lock. A node waiting for that lock must not
hold a snapshot meanwhile: revisions 0006 and 0010 build indexes CONCURRENTLY, and such a build
waits for every transaction with an older snapshot to end, the waiting node's included. With the
wait inside a statement (``SELECT pg_advisory_lock``), PostgreSQL found a deadlock and one of
the nodes stopped with "cannot open the index: deadlock detected".
"""

from __future__ import annotations

import threading
import time

import psycopg

from solent.index.migrate import PG_LOCK_ID, schema_state
from solent.index.sql import Index


def _others_connected(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()"
    ).fetchone()
    return int(row[0]) if row else 0


def test_nodes_migrating_at_once_both_start(fresh_postgres_url: str) -> None:
    indexes = [Index(fresh_postgres_url), Index(fresh_postgres_url)]
    errors: list[BaseException] = []

    def start(index: Index) -> None:
        try:
            index.migrate()
        except BaseException as exc:  # reported below
            errors.append(exc)

    # An operator's `solent db upgrade` holds the lock while both nodes start: both wait, then
    # one migrates the whole chain while the other still waits.
    with psycopg.connect(fresh_postgres_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (PG_LOCK_ID,))
        threads = [threading.Thread(target=start, args=(i,)) for i in indexes]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while _others_connected(holder) < 2 and time.monotonic() < deadline and not errors:
            time.sleep(0.05)
        time.sleep(0.5)  # both are now waiting for the lock
        holder.execute("SELECT pg_advisory_unlock(%s)", (PG_LOCK_ID,))
        for t in threads:
            t.join(timeout=300)
    try:
        assert not errors, errors
        assert not any(t.is_alive() for t in threads)
        assert [schema_state(i) for i in indexes] == ["head", "head"]
    finally:
        for index in indexes:
            index.close()
