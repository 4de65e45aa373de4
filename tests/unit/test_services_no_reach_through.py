"""No runtime reach-through (issue 11): an adapter holding the ``Services`` bundle cannot get to
the index, the blob store or a database engine/connection by following public attribute names
(``services.query.index``, ``services.retrieve.store.root`` ...). ``lint-imports`` stops the
imports; this stops the attribute walk that needs no import.

The walk follows public names (no leading underscore) of the bundle and of every object found,
a few levels deep, into lists, tuples, dicts and sets too; it fails naming each path found.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from solent.app import Archive
from solent.index.sql import Index
from solent.storage.filesystem import FileBlobStore

DEPTH = 4
FORBIDDEN: tuple[type, ...] = (Index, Engine, Connection, Session)
ATOMS = (str, bytes, int, float, bool, type(None))


def _forbidden(value: object) -> bool:
    if isinstance(value, FORBIDDEN):
        return True
    # Every blob store (filesystem, S3, wrappers) lives in solent.storage.
    return type(value).__module__.startswith("solent.storage")


def _public_values(obj: object) -> list[tuple[str, object]]:
    if isinstance(obj, dict):
        return [(f"[{k!r}]", v) for k, v in list(obj.items())[:50]]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [(f"[{i}]", v) for i, v in enumerate(list(obj)[:50])]
    names: set[str] = set()
    if dataclasses.is_dataclass(obj):
        names |= {f.name for f in dataclasses.fields(obj)}
    names |= set(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        names |= set(getattr(cls, "__slots__", ()))
        # Properties are public attributes too (e.g. a ``store`` property).
        names |= {n for n, v in vars(cls).items() if isinstance(v, property)}
    out = []
    for name in sorted(n for n in names if not n.startswith("_")):
        try:
            out.append((f".{name}", getattr(obj, name)))
        except Exception:  # a property that cannot answer is no way through
            continue
    return out


def reach_through(root: object, root_name: str = "services") -> list[str]:
    """Paths of public names from ``root`` to an index, blob store or engine/connection."""
    found: list[str] = []
    seen: set[int] = set()
    todo: list[tuple[str, object, int]] = [(root_name, root, 0)]
    while todo:
        path, obj, depth = todo.pop()
        if id(obj) in seen or isinstance(obj, (*ATOMS, type)):
            continue
        seen.add(id(obj))
        for name, value in _public_values(obj):
            if _forbidden(value):
                found.append(f"{path}{name} -> {type(value).__name__}")
            elif depth + 1 < DEPTH:
                todo.append((f"{path}{name}", value, depth + 1))
    return sorted(found)


def test_the_walk_finds_a_reach_through(archive: Archive) -> None:
    """The check itself: a public index or store two levels down is found."""

    @dataclasses.dataclass
    class Leaky:
        inner: Any

    class Holder:
        def __init__(self, index: Index, store: object) -> None:
            self.index = index
            self._store = store
            self.items = [store]

    leaks = reach_through(Leaky(Holder(archive.index, archive.store)), "leaky")
    assert leaks == [
        "leaky.inner.index -> Index",
        f"leaky.inner.items[0] -> {type(archive.store).__name__}",
    ]
    assert isinstance(archive.store, FileBlobStore)


def test_services_expose_no_index_store_or_connection(archive: Archive) -> None:
    leaks = reach_through(archive.services)
    assert leaks == [], "public ways from the Services bundle to the data layer:\n" + "\n".join(
        leaks
    )
