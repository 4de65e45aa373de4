"""Relaxed writes (records of reads) commit without an fsync of their own, never weaken the
durability of the writes that follow, and reach the disk within RELAXED_SYNC_S."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import Connection, select

from solent.domain.principal import SYSTEM
from solent.index import schema as t
from solent.index.sql import RELAXED_SYNC_S, Index
from solent.services.audit import AuditAction, AuditTrail


def _synchronous(conn: Connection) -> int:
    return int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())


def test_relaxed_then_full_on_the_same_pooled_connection(tmp_path: Path) -> None:
    index = Index(f"sqlite:///{tmp_path / 'index.db'}")
    index.migrate()
    try:
        assert index.write(_synchronous, relaxed=True) == 1  # NORMAL
        assert index.write(_synchronous) == 2  # FULL again for data changes
        assert index.write(_synchronous, relaxed=True) == 1
    finally:
        index.close()


def test_read_audit_is_relaxed_and_synced_soon_after(tmp_path: Path) -> None:
    index = Index(f"sqlite:///{tmp_path / 'index.db'}")
    index.migrate()
    audit = AuditTrail(index)
    try:
        seq = audit.record(SYSTEM, AuditAction.QUERY, detail={"keys": {"PatientID": "X"}})
        with index.read() as conn:
            found = conn.execute(select(t.audit_log.c.action).where(t.audit_log.c.seq == seq))
            assert found.scalar_one() == "query"
        assert index._wal_sync is not None
        deadline = time.monotonic() + 10 * RELAXED_SYNC_S + 5
        while index._wal_sync.syncs == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert index._wal_sync.syncs >= 1, "the relaxed commit was never fsynced"
        # A change of data is never relaxed; the chain stays whole across both kinds.
        audit.record(SYSTEM, AuditAction.BREAK_GLASS, detail={"reason": "test"})
        assert audit.verify().intact
    finally:
        index.close()
