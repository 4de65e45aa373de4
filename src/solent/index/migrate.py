"""Apply Alembic migrations at start-up, safely from several nodes at once."""

from __future__ import annotations

import logging
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


def alembic_config(index: Index) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", index.url.replace("%", "%%"))
    return cfg


def upgrade(index: Index, revision: str = "head") -> None:
    cfg = alembic_config(index)
    with index.engine.connect().execution_options(solent_write=True) as conn:
        if index.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": PG_LOCK_ID})
            conn.commit()
        try:
            if revision == "head" and _current_unknown(cfg, conn):
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


def _current_unknown(cfg: Config, conn: Connection) -> bool:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    current = set(MigrationContext.configure(conn).get_current_heads())
    known = {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}
    return bool(current) and not current <= known


def schema_state(index: Index) -> str:
    """Where the database schema stands against this code's migrations, for readiness.

    ``head``: at our newest revision. ``ahead``: at a revision this code does not know, i.e. a
    newer node already upgraded it; migrations are written so the previous release tolerates that
    (rolling upgrade), so the node stays ready. ``behind``: older than our head (not upgraded yet).
    Reading the version table also proves the database answers.
    """
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(index))
    with index.engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    heads = set(script.get_heads())
    if current == heads:
        return "head"
    known = {rev.revision for rev in script.walk_revisions()}
    if current and not current <= known:
        return "ahead"
    return "behind"
