"""SQL of the registered HL7 v2 senders (issue 6): MSH-3/MSH-4 and the addresses they call from."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, delete, insert, or_, select

from solent.domain.records import SenderRow
from solent.errors import AlreadyExists, NotFound
from solent.index import schema as t
from solent.index.sql import Index, now

ANY = "*"


def _row(r: object) -> SenderRow:
    hosts = tuple(h for h in str(r.hosts).split(",") if h)  # type: ignore[attr-defined]
    return SenderRow(r.application, r.facility, hosts, r.trust_code)  # type: ignore[attr-defined]


def add_sender(
    index: Index, application: str, facility: str, hosts: Sequence[str], trust_code: str | None
) -> SenderRow:
    row = SenderRow(application, facility, tuple(hosts), trust_code)
    c = t.hl7_sender.c

    def op(conn: Connection) -> SenderRow:
        if (
            trust_code is not None
            and not conn.execute(select(t.trust.c.code).where(t.trust.c.code == trust_code)).first()
        ):
            raise NotFound(f"trust {trust_code} does not exist; add it with `solent trust add`")
        if conn.execute(
            select(c.application).where(c.application == application, c.facility == facility)
        ).first():
            raise AlreadyExists(
                f"HL7 sender {application}^{facility} already exists; remove it first"
            )
        conn.execute(
            insert(t.hl7_sender).values(
                application=application,
                facility=facility,
                hosts=",".join(hosts),
                trust_code=trust_code,
                created_at=now(),
            )
        )
        return row

    return index.write(op)


def list_senders(index: Index) -> list[SenderRow]:
    c = t.hl7_sender.c
    with index.read() as conn:
        return [
            _row(r) for r in conn.execute(select(t.hl7_sender).order_by(c.facility, c.application))
        ]


def find_sender(index: Index, application: str, facility: str) -> SenderRow | None:
    """The registration of MSH-3^MSH-4: the exact application first, then the facility's "*"."""
    c = t.hl7_sender.c
    with index.read() as conn:
        rows = [
            _row(r)
            for r in conn.execute(
                select(t.hl7_sender).where(
                    c.facility == facility, or_(c.application == application, c.application == ANY)
                )
            )
        ]
    rows.sort(key=lambda r: r.application == ANY)
    return rows[0] if rows else None


def remove_sender(index: Index, application: str, facility: str) -> None:
    c = t.hl7_sender.c

    def op(conn: Connection) -> None:
        res = conn.execute(
            delete(t.hl7_sender).where(c.application == application, c.facility == facility)
        )
        if res.rowcount == 0:
            raise NotFound(f"HL7 sender {application}^{facility} is not registered")

    index.write(op)
