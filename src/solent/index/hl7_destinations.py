"""SQL of the registered HL7 destinations (R57): each trust's RIS, told of study edits."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import Connection, delete, insert, select

from solent.domain.records import DestinationRow
from solent.errors import AlreadyExists, NotFound
from solent.index import schema as t
from solent.index.sql import Index, now


def _row(r: object) -> DestinationRow:
    return DestinationRow(
        r.trust_code,  # type: ignore[attr-defined]
        r.host,  # type: ignore[attr-defined]
        int(r.port),  # type: ignore[attr-defined]
        r.application,  # type: ignore[attr-defined]
        r.facility,  # type: ignore[attr-defined]
        bool(r.tls),  # type: ignore[attr-defined]
        r.tls_ca,  # type: ignore[attr-defined]
    )


def add_destination(index: Index, row: DestinationRow) -> DestinationRow:
    c = t.hl7_destination.c

    def op(conn: Connection) -> DestinationRow:
        if not conn.execute(select(t.trust.c.code).where(t.trust.c.code == row.trust_code)).first():
            raise NotFound(f"trust {row.trust_code} does not exist; add it with `solent trust add`")
        if conn.execute(select(c.trust_code).where(c.trust_code == row.trust_code)).first():
            raise AlreadyExists(
                f"trust {row.trust_code} has an HL7 destination already; remove it first"
            )
        conn.execute(
            insert(t.hl7_destination).values(
                trust_code=row.trust_code,
                host=row.host,
                port=row.port,
                application=row.application,
                facility=row.facility,
                tls=row.tls,
                tls_ca=row.tls_ca,
                created_at=now(),
            )
        )
        return row

    return index.write(op)


def list_destinations(index: Index, trusts: Collection[str] | None = None) -> list[DestinationRow]:
    """Every destination, or those of ``trusts``, by trust code."""
    c = t.hl7_destination.c
    q = select(t.hl7_destination).order_by(c.trust_code)
    if trusts is not None:
        q = q.where(c.trust_code.in_(sorted(trusts)))
    with index.read() as conn:
        return [_row(r) for r in conn.execute(q)]


def remove_destination(index: Index, trust_code: str) -> None:
    c = t.hl7_destination.c

    def op(conn: Connection) -> None:
        res = conn.execute(delete(t.hl7_destination).where(c.trust_code == trust_code))
        if res.rowcount == 0:
            raise NotFound(f"trust {trust_code} has no HL7 destination")

    index.write(op)
