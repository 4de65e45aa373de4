"""Sources and what they hold: registration, the inventory (delta sync), progress, forgetting.

The inventory is the migration's memory of each legacy system: one row per instance whose
state the other parts move on. Re-listing a source upserts, so a live legacy system can be
re-inventoried every night until cut-over and only new or changed rows count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from solent.domain.principal import Principal
from solent.errors import InvalidInput, NotFound
from solent.index import schema as t
from solent.index.sql import Index, now
from solent.services.access import Permission
from solent.services.migration.model import (
    KINDS,
    Entry,
    InventoryDelta,
    Source,
    parse_hours,
    plain,
    require,
    source_of,
)

_DEMOGRAPHICS = ("patient_id", "patient_name", "birth_date", "sex", "nhs_number")


class Inventory:
    def __init__(self, index: Index) -> None:
        self._index = index

    def add_source(self, principal: Principal, src: Source) -> Source:
        require(principal, Permission.ADMIN)
        if src.kind not in KINDS:
            raise InvalidInput(f"source kind must be one of {', '.join(KINDS)}")
        if self._index.get_trust(src.trust) is None:
            raise InvalidInput(f"no trust {src.trust!r}; add it with `solent trust add`")
        if src.associations < 1 or src.rate < 0:
            raise InvalidInput("associations must be >= 1 and rate >= 0")
        if src.hours is not None:
            parse_hours(src.hours)

        def op(conn: Connection) -> None:
            c = t.migration_source.c
            values = {k: v for k, v in asdict(src).items() if k != "trust"}
            values["trust_code"] = src.trust
            if conn.execute(select(c.name).where(c.name == src.name)).first():
                conn.execute(update(t.migration_source).where(c.name == src.name).values(values))
            else:
                conn.execute(insert(t.migration_source).values({**values, "created_at": now()}))

        self._index.write(op)
        return src

    def sources(self, principal: Principal) -> list[Source]:
        require(principal, Permission.STORE)
        with self._index.read() as conn:
            rows = conn.execute(select(t.migration_source).order_by(t.migration_source.c.name))
            return [source_of(r) for r in rows.mappings()]

    def source(self, principal: Principal, name: str) -> Source:
        for s in self.sources(principal):
            if s.name == name:
                return s
        raise NotFound(f"no migration source {name!r}; add it with `solent migrate source add`")

    def record_inventory(
        self, principal: Principal, source: str, entries: Iterable[Entry]
    ) -> InventoryDelta:
        """Upsert what the source lists now: new instances become pending (delta sync)."""
        require(principal, Permission.STORE)
        delta = InventoryDelta()
        batch: list[Entry] = []
        for e in entries:
            batch.append(e)
            if len(batch) >= 500:
                self._upsert(source, batch, delta)
                batch = []
        if batch:
            self._upsert(source, batch, delta)
        return delta

    def _upsert(self, source: str, batch: list[Entry], delta: InventoryDelta) -> None:
        c = t.migration_item.c

        def op(conn: Connection) -> None:
            known = {
                r.sop_uid: r
                for r in conn.execute(
                    select(t.migration_item).where(
                        c.source == source, c.sop_uid.in_([e.sop_uid for e in batch])
                    )
                )
            }
            stamp = now()
            for e in batch:
                delta.total += 1
                values = asdict(e)
                old = known.get(e.sop_uid)
                if old is None:
                    conn.execute(
                        insert(t.migration_item).values(
                            {
                                **values,
                                "source": source,
                                "state": "pending",
                                "seen_at": stamp,
                                "updated_at": stamp,
                            }
                        )
                    )
                    delta.new += 1
                    continue
                if any(getattr(old, k) != values[k] for k in _DEMOGRAPHICS):
                    delta.changed += 1
                keep = {k: v for k, v in values.items() if v is not None or k in _DEMOGRAPHICS}
                conn.execute(
                    update(t.migration_item)
                    .where(c.pk == old.pk)
                    .values({**keep, "seen_at": stamp, "updated_at": stamp})
                )

        self._index.write(op)

    def inventory(self, principal: Principal, source: str) -> list[dict[str, Any]]:
        require(principal, Permission.STORE)
        c = t.migration_item.c
        with self._index.read() as conn:
            q = select(t.migration_item).where(c.source == source).order_by(c.pk)
            return [
                {k: plain(v) for k, v in r.items() if k != "pk"} for r in conn.execute(q).mappings()
            ]

    def progress(self, principal: Principal, source: str) -> dict[str, int]:
        require(principal, Permission.STORE)
        c = t.migration_item.c
        with self._index.read() as conn:
            return {
                str(s): int(n)
                for s, n in conn.execute(
                    select(c.state, func.count()).where(c.source == source).group_by(c.state)
                )
            }

    def forget_source(self, principal: Principal, source: str) -> None:
        """Remove a source's migration state (not the instances it delivered)."""
        require(principal, Permission.ADMIN)

        def op(conn: Connection) -> None:
            for table in (t.migration_item, t.migration_patient, t.migration_quarantine):
                conn.execute(delete(table).where(table.c.source == source))
            conn.execute(delete(t.migration_source).where(t.migration_source.c.name == source))

        self._index.write(op)
