"""Access changes announced between the processes of one embedded (SQLite) archive.

On PostgreSQL the database notifies every node when users, tokens, break-glass grants, links or
a patient's identity change (migration 0005); the nodes drop their look-up caches at once. An
embedded archive has no NOTIFY, yet it is shared by processes too: `solent serve` and the
`solent user disable` / `solent token revoke` a PACS manager runs beside it. Without this, a
disabled user kept working for the caches' TTL.

Here each write connection carries TEMP triggers on the same tables (SQLite triggers may call
a function of the connection); when such a transaction has committed, the connection appends
one byte to ``<database>-access``. A process compares that file's size and time with what it
saw (one ``stat``, ~1 µs, in `solent.ttl_cache`), so the next look-up after the writer returns
reloads. The byte is appended after the commit, never before: a reader that saw the new stamp
also sees the new rows.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Table -> the changes that alter who may see what, or who a caller is (as migration 0005).
WATCHED: dict[str, tuple[str, ...]] = {
    "app_user": ("INSERT", "UPDATE", "DELETE"),
    "api_token": ("INSERT", "UPDATE", "DELETE"),
    "break_glass": ("INSERT", "UPDATE", "DELETE"),
    "patient_link": ("INSERT", "UPDATE", "DELETE"),
    "hl7_sender": ("INSERT", "UPDATE", "DELETE"),
    "dicom_node": ("INSERT", "UPDATE", "DELETE"),
    "trust": ("INSERT", "UPDATE", "DELETE"),
    "patient": ("UPDATE OF issuer, local_id, nhs_number", "DELETE"),
    "study": ("UPDATE OF patient_pk", "DELETE"),
}
FUNCTION = "solent_access_changed"
_CHANGED = "solent_access_changed"  # key in the pool record's info: a change awaits its commit


def stamp_path(database: Path) -> Path:
    return Path(str(database) + "-access")


def install(dbapi_conn: sqlite3.Connection, info: dict[str, Any]) -> bool:
    """Create this connection's TEMP triggers; False while the tables do not exist yet
    (before the first migration), so the caller tries again on a later transaction."""

    def changed() -> None:
        info[_CHANGED] = True

    dbapi_conn.create_function(FUNCTION, 0, changed)
    cur = dbapi_conn.cursor()
    try:
        for table, events in WATCHED.items():
            for n, when in enumerate(events):
                cur.execute(
                    f"CREATE TEMP TRIGGER IF NOT EXISTS solent_ac_{table}_{n} AFTER {when} "
                    f"ON main.{table} BEGIN SELECT {FUNCTION}(); END"
                )
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return False
        raise
    finally:
        cur.close()
    return True


def drop(dbapi_conn: sqlite3.Connection) -> None:
    """Drop the TEMP triggers (a migration may rebuild the tables they watch)."""
    cur = dbapi_conn.cursor()
    try:
        found = cur.execute(
            "SELECT name FROM sqlite_temp_master WHERE type = 'trigger' AND name LIKE 'solent_ac_%'"
        )
        names = [r[0] for r in found]
        for name in names:
            cur.execute(f"DROP TRIGGER IF EXISTS temp.{name}")
    finally:
        cur.close()


def announce_if_changed(info: dict[str, Any], stamp: Path) -> None:
    """After the transaction ended: if it changed access and committed, tell other processes.
    A rolled-back change announces too (harmless: caches reload what is there)."""
    if not info.pop(_CHANGED, False):
        return
    try:
        fd = os.open(stamp, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b".")
        finally:
            os.close(fd)
    except OSError as exc:  # the change stands; other processes wait out their TTL instead
        log.warning("could not announce an access change in %s: %s", stamp, exc)
