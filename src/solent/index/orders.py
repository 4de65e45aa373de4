"""The orders table: scheduled procedure steps for the Modality Worklist.

Written by `solent worklist add` and the HL7 order handler; read by the worklist C-FIND SCP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, insert, or_, select, update

from solent.errors import NotFound
from solent.index import schema as t
from solent.index.sql import Index, now

ORDER_FIELDS = tuple(c.name for c in t.orders.columns if c.name not in ("created_at", "updated_at"))


def upsert_order(index: Index, order: Mapping[str, Any]) -> bool:
    """Insert or update one order by (accession_number, accession_issuer); True if new."""
    values = {k: v for k, v in order.items() if k in ORDER_FIELDS}
    unknown = sorted(set(order) - set(ORDER_FIELDS))
    if unknown:
        raise ValueError(f"unknown order field(s): {', '.join(unknown)}")

    def op(conn: Connection) -> bool:
        trust = values.get("patient_issuer")
        if not conn.execute(select(t.trust.c.code).where(t.trust.c.code == trust)).first():
            raise NotFound(f"trust {trust} does not exist; add it with `solent trust add`")
        key = (
            t.orders.c.accession_number == values["accession_number"],
            t.orders.c.accession_issuer == values["accession_issuer"],
        )
        stamp = now()
        if conn.execute(select(t.orders.c.accession_number).where(*key)).first():
            conn.execute(update(t.orders).where(*key).values(**values, updated_at=stamp))
            return False
        values.setdefault("status", "SCHEDULED")
        conn.execute(insert(t.orders).values(**values, created_at=stamp, updated_at=stamp))
        return True

    return index.write(op)


def find_orders(
    index: Index,
    *,
    exact: Mapping[str, str] | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    statuses: tuple[str, ...] = ("SCHEDULED", "ARRIVED", "READY"),
    limit: int = 1000,
    trust: str | None = None,
) -> list[dict[str, Any]]:
    """Orders whose columns equal ``exact`` and whose start date is in the range (inclusive).

    The worklist SCP pre-filters here on indexed columns and applies wildcard matching itself.
    ``trust`` keeps only that trust's orders (its patient or its accession number): accession
    numbers are unique per issuer only, so a scanner must never see another trust's order.
    """
    c = t.orders.c
    q = select(t.orders).order_by(c.scheduled_start_date, c.scheduled_start_time)
    for name, value in (exact or {}).items():
        if name not in ORDER_FIELDS:
            raise ValueError(f"unknown order field {name}")
        q = q.where(c[name] == value)
    if date_from:
        q = q.where(c.scheduled_start_date >= date_from)
    if date_to:
        q = q.where(c.scheduled_start_date <= date_to)
    if statuses:
        q = q.where(c.status.in_(statuses))
    if trust is not None:
        q = q.where(or_(c.patient_issuer == trust, c.accession_issuer == trust))
    with index.read() as conn:
        return [dict(r) for r in conn.execute(q.limit(limit)).mappings()]


def order_step_ids(conn: Connection, accession: str, issuer: str) -> tuple[str, str] | None:
    """(Requested Procedure ID, Scheduled Procedure Step ID) of the order, '' when not given;
    None when no order (accession, issuer) is known."""
    o = t.orders.c
    row = conn.execute(
        select(o.requested_procedure_id, o.scheduled_procedure_step_id).where(
            o.accession_number == accession, o.accession_issuer == issuer
        )
    ).first()
    return None if row is None else (str(row[0] or ""), str(row[1] or ""))
