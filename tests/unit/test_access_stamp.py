"""Access changes made by another process of an embedded archive (a PACS manager's `solent user
disable` beside `solent serve`) reach this process's caches at once, not after their TTL.

The other process is a second `Index` on the same SQLite file that writes plain SQL, so this
process's in-memory generation counters know nothing of it: only the stamp can tell.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, text

from solent import ttl_cache
from solent.app import Archive
from solent.index.sql import Index
from solent.security import authn
from tests.unit.security_fixtures import add_user


@pytest.fixture
def other_process(archive: Archive) -> Iterator[Index]:
    ttl_cache.watch(archive.index.access_stamp)
    other = Index(archive.index.url)
    yield other
    other.close()
    ttl_cache.watch(None)


def test_a_user_disabled_elsewhere_is_refused_on_the_next_request(
    archive: Archive, other_process: Index
) -> None:
    auth = archive.services.authenticator
    token = add_user(archive, "drza", "ZZA", "clinician")["Authorization"].split()[1]
    auth.bearer(token, None)
    assert auth.remembered(token, None) is not None  # cached for the next requests
    other_process.write(
        lambda c: c.execute(text("UPDATE app_user SET disabled = 1 WHERE name = 'drza'"))
    )
    assert auth.remembered(token, None) is None
    with pytest.raises(authn.AuthenticationFailed):
        auth.bearer(token, None)


def test_only_access_changes_move_the_stamp(archive: Archive, other_process: Index) -> None:
    stamp = archive.index.access_stamp
    assert stamp is not None

    def size() -> int:
        return stamp.stat().st_size if stamp.exists() else 0

    before = size()
    other_process.write(
        lambda c: c.execute(text("INSERT INTO trust VALUES ('ZZC', 'Trust C', '2026-12-05')"))
    )
    assert size() == before + 1
    # What changes no one's access leaves it alone.
    other_process.write(lambda c: c.execute(text("UPDATE trust SET name = 'C' WHERE 1 = 0")))
    other_process.write(
        lambda c: c.execute(text("INSERT INTO feed_cursor (consumer, seq) VALUES ('x', 1)"))
    )
    assert size() == before + 1

    def failing(c: Connection) -> None:
        c.execute(text("DELETE FROM trust WHERE code = 'ZZC'"))
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        other_process.write(failing)
    assert other_process.list_trusts()[-1].code == "ZZC"
    assert size() == before + 2  # announced all the same: harmless, caches reload


def test_migrating_again_keeps_the_triggers_working(archive: Archive, other_process: Index) -> None:
    stamp = archive.index.access_stamp
    assert stamp is not None
    other_process.migrate()
    before = stamp.stat().st_size if stamp.exists() else 0
    other_process.write(
        lambda c: c.execute(text("INSERT INTO trust VALUES ('ZZE', 'Trust E', '2026-12-05')"))
    )
    assert stamp.stat().st_size == before + 1
