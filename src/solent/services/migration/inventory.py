"""Sources and what they hold: registration, the inventory (delta sync), progress, forgetting.

The inventory is the migration's memory of each legacy system: one row per instance whose
state the other parts move on. Re-listing a source upserts, so a live legacy system can be
re-inventoried every night until cut-over and only new or changed rows count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from solent.domain.principal import Principal
from solent.errors import InvalidInput, NotFound
from solent.index import schema as t
from solent.index.sql import Index, now
from solent.services.access import Permission
from solent.services.migration.model import (
    CONFLICT,
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
# Where a listing puts an instance: two listings of one UID that differ here are two copies.
_WHERE = ("patient_id", "study_uid", "series_uid", "locator")


def _same_instant(a: datetime | None, b: datetime) -> bool:
    """Equal instants whether the database hands back an aware or a naive (UTC) datetime."""
    if a is None:
        return False
    return (
        a.replace(tzinfo=None) == b.astimezone(UTC).replace(tzinfo=None)
        if a.tzinfo is None
        else a == b
    )


def _where(row: dict[str, Any]) -> str:
    at = (
        f"patient ID {row['patient_id'] or '(none)'}, study {row['study_uid']}, "
        f"series {row['series_uid']}"
    )
    return f"{at}, file {row['locator']}" if row.get("locator") else at


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
        """Upsert what the source lists now: new instances become pending (delta sync).

        One stamp marks every row this pass lists, so a SOP Instance UID the source lists
        twice in one pass (two files of a CD, one UID under two patients or studies) is seen
        as such wherever the two listings fall: the row becomes ``conflict`` and neither copy
        moves until the source holds one. A later pass that lists it once releases it.
        """
        require(principal, Permission.STORE)
        delta = InventoryDelta()
        stamp = now()
        batch: list[Entry] = []
        for e in entries:
            batch.append(e)
            if len(batch) >= 500:
                self._upsert(source, batch, delta, stamp)
                batch = []
        if batch:
            self._upsert(source, batch, delta, stamp)
        return delta

    def _upsert(
        self, source: str, batch: list[Entry], delta: InventoryDelta, stamp: datetime
    ) -> None:
        c = t.migration_item.c

        def op(conn: Connection) -> None:
            known: dict[str, dict[str, Any]] = {
                r["sop_uid"]: dict(r)
                for r in conn.execute(
                    select(t.migration_item).where(
                        c.source == source, c.sop_uid.in_([e.sop_uid for e in batch])
                    )
                ).mappings()
            }
            for e in batch:
                values = asdict(e)
                old = known.get(e.sop_uid)
                if old is None:
                    row = {
                        **values,
                        "source": source,
                        "state": "pending",
                        "seen_at": stamp,
                        "updated_at": stamp,
                    }
                    added = conn.execute(insert(t.migration_item).values(row))
                    assert added.inserted_primary_key is not None
                    known[e.sop_uid] = {**row, "pk": added.inserted_primary_key[0], "reason": None}
                    delta.total += 1
                    delta.new += 1
                    continue
                if _same_instant(old["seen_at"], stamp):  # listed earlier in this pass
                    if all(old[k] == values[k] for k in _WHERE):
                        continue  # the same listing twice (one instance): nothing to do
                    delta.conflicts += old["state"] != CONFLICT
                    reason = (
                        f"{old['reason']}; also {_where(values)}"
                        if old["state"] == CONFLICT and len(old["reason"] or "") < 4000
                        else old["reason"]
                        if old["state"] == CONFLICT
                        else f"the source lists SOP Instance UID {e.sop_uid} more than once: "
                        f"{_where(old)} and {_where(values)}; neither copy moves. Correct the "
                        "source so it holds one, then run again"
                    )
                    conn.execute(
                        update(t.migration_item)
                        .where(c.pk == old["pk"])
                        .values(state=CONFLICT, reason=reason, updated_at=stamp)
                    )
                    old.update(state=CONFLICT, reason=reason)
                    continue
                delta.total += 1
                if any(old[k] != values[k] for k in _DEMOGRAPHICS):
                    delta.changed += 1
                keep = {k: v for k, v in values.items() if v is not None or k in _DEMOGRAPHICS}
                if old["state"] == CONFLICT:  # listed once again: it may move (this pass decides)
                    keep.update(state="pending", reason=None)
                conn.execute(
                    update(t.migration_item)
                    .where(c.pk == old["pk"])
                    .values({**keep, "seen_at": stamp, "updated_at": stamp})
                )
                old.update({**keep, "seen_at": stamp})

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
