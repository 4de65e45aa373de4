"""`Index.reads_at_once`: what lets the event loop read the index (a repeat /frames request)."""

from __future__ import annotations

from pathlib import Path

from solent.index.sql import Index


def test_only_with_an_idle_pooled_sqlite_connection(tmp_path: Path) -> None:
    index = Index(f"sqlite:///{tmp_path / 'index.db'}")
    assert not index.reads_at_once()  # no connection yet: opening one is work
    with index.read():
        assert not index.reads_at_once()  # the one connection is busy: a read would wait
    assert index.reads_at_once()
    with index.read(), index.read():
        assert not index.reads_at_once()
    assert index.reads_at_once()
