"""Apply Alembic migrations at start-up, safely from several nodes at once."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from sqlalchemy import text

if TYPE_CHECKING:
    from solent.index.sql import Index

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
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
        finally:
            if index.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": PG_LOCK_ID})
                conn.commit()
