"""Apply Alembic migrations at start-up, safely from several nodes at once."""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

if TYPE_CHECKING:
    from solent.index.sql import Index

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
PG_LOCK_ID = 0x50AC5  # advisory lock so two starting nodes do not migrate at once
LOCK_POLL_S = 0.2  # how often a node waiting for another's migration tries the lock again


def alembic_config(index: Index) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", index.url.replace("%", "%%"))
    return cfg


def upgrade(index: Index, revision: str = "head") -> None:
    cfg = alembic_config(index)
    with index.engine.connect().execution_options(solent_write=True, solent_migrating=True) as conn:
        if index.dialect == "postgresql":
            _wait_for_lock(conn)
        try:
            if revision == "head" and _current_unknown(conn):
                # A newer release already upgraded the schema (rolling upgrade): this node
                # runs on it as it is; migrations are written so the previous release tolerates
                # them (docs/operations.md).
                log.warning("database schema is newer than this release; not migrating")
                return
            conn.commit()  # end the reading transaction: Alembic begins its own
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
        finally:
            if index.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": PG_LOCK_ID})
                conn.commit()


def _wait_for_lock(conn: Connection) -> None:
    """Take the migration lock, waiting between short tries rather than in one statement.

    A statement waiting for the lock holds a snapshot all the while, and the holder's
    ``CREATE INDEX CONCURRENTLY`` (revisions 0006, 0010) waits for every older snapshot to end:
    PostgreSQL then reports a deadlock and one of the starting nodes stops. Between tries this
    connection is idle outside a transaction, so the build does not wait for it.
    """
    waited = 0.0
    while True:
        got = conn.execute(text("SELECT pg_try_advisory_lock(:id)"), {"id": PG_LOCK_ID}).scalar()
        conn.commit()
        if got:
            return
        if waited == 0.0 or waited // 30 != (waited + LOCK_POLL_S) // 30:
            log.info("waiting for another node (or `solent db upgrade`) to finish migrating")
        time.sleep(LOCK_POLL_S)
        waited += LOCK_POLL_S


@lru_cache(maxsize=1)
def _revisions() -> tuple[frozenset[str], frozenset[str]]:
    """(heads, every revision) of this release's migrations: read once per process, since
    readiness asks several times a second and Alembic re-reads the scripts on every call."""
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(cfg)
    heads = frozenset(script.get_heads())
    return heads, frozenset(rev.revision for rev in script.walk_revisions())


def _current(conn: Connection) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    return set(MigrationContext.configure(conn).get_current_heads())


def _current_unknown(conn: Connection) -> bool:
    current = _current(conn)
    return bool(current) and not current <= _revisions()[1]


def schema_state(index: Index) -> str:
    """Where the database schema stands against this code's migrations, for readiness.

    ``head``: at our newest revision. ``ahead``: at a revision this code does not know, i.e. a
    newer node already upgraded it; migrations are written so the previous release tolerates that
    (rolling upgrade), so the node stays ready. ``behind``: older than our head (not upgraded yet).
    Reading the version table also proves the database answers.
    """
    with index.engine.connect() as conn:
        current = _current(conn)
    heads, known = _revisions()
    if current == heads:
        return "head"
    if current and not current <= known:
        return "ahead"
    return "behind"
