"""SQL of the HL7 inbox: the message journal, orders from ORM/OMI and reports from ORU."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, and_, false, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from solent.index import schema as t
from solent.index.sql import now

# -- message journal -------------------------------------------------------------------------


def journal_message(
    conn: Connection,
    *,
    sender: str | None,
    control_id: str | None,
    message_type: str | None,
    raw: str,
    remote_address: str | None,
) -> tuple[int, bool]:
    """Insert a received message; returns (pk, True) or the earlier copy's (pk, False)."""
    if sender is not None and control_id is not None:
        found = find_message(conn, sender, control_id)
        if found:
            return int(found["pk"]), False
    try:
        with conn.begin_nested():
            res = conn.execute(
                insert(t.hl7_message).values(
                    sender=sender,
                    control_id=control_id,
                    message_type=message_type,
                    received_at=now(),
                    remote_address=remote_address,
                    raw=raw,
                    status="received",
                )
            )
    except IntegrityError:
        found = find_message(conn, sender or "", control_id or "")
        if found is None:
            raise
        return int(found["pk"]), False
    return int(res.inserted_primary_key[0]), True  # type: ignore[index]


def find_message(conn: Connection, sender: str, control_id: str) -> dict[str, Any] | None:
    c = t.hl7_message.c
    r = (
        conn.execute(select(t.hl7_message).where(c.sender == sender, c.control_id == control_id))
        .mappings()
        .first()
    )
    return dict(r) if r else None


def get_message(conn: Connection, pk: int) -> dict[str, Any] | None:
    r = conn.execute(select(t.hl7_message).where(t.hl7_message.c.pk == pk)).mappings().first()
    return dict(r) if r else None


def finish_message(conn: Connection, pk: int, status: str, ack_code: str, detail: str) -> None:
    conn.execute(
        update(t.hl7_message)
        .where(t.hl7_message.c.pk == pk)
        .values(status=status, ack_code=ack_code, detail=detail, processed_at=now())
    )


def messages(
    conn: Connection,
    *,
    status: str | None = None,
    limit: int = 100,
    facilities: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """The newest messages; ``facilities`` (trust codes) keeps those whose sender (MSH-3^MSH-4)
    is one of theirs, in the query itself so ``limit`` counts only what is kept."""
    c = t.hl7_message.c
    q = select(t.hl7_message).order_by(c.pk.desc()).limit(limit)
    if status:
        q = q.where(c.status == status)
    if facilities is not None:
        mine = [c.sender.endswith(f"^{code}", autoescape=True) for code in facilities]
        q = q.where(or_(false(), *mine))
    return [dict(r) for r in conn.execute(q).mappings()]


def pending_message_pks(conn: Connection) -> list[int]:
    c = t.hl7_message.c
    q = select(c.pk).where(c.status == "received").order_by(c.pk)
    return [int(pk) for pk in conn.execute(q).scalars()]


# -- orders ----------------------------------------------------------------------------------


def get_order(conn: Connection, accession: str, issuer: str) -> dict[str, Any] | None:
    c = t.orders.c
    r = (
        conn.execute(
            select(t.orders).where(c.accession_number == accession, c.accession_issuer == issuer)
        )
        .mappings()
        .first()
    )
    return dict(r) if r else None


def upsert_order(conn: Connection, values: dict[str, Any]) -> bool:
    """Insert or update the worklist row keyed by (accession, issuer); True when new."""
    c = t.orders.c
    key = (
        c.accession_number == values["accession_number"],
        c.accession_issuer == values["accession_issuer"],
    )
    stamp = now()
    if conn.execute(select(c.accession_number).where(*key)).first():
        conn.execute(update(t.orders).where(*key).values(**values, updated_at=stamp))
        return False
    conn.execute(
        insert(t.orders).values(
            **{"status": "SCHEDULED", **values}, created_at=stamp, updated_at=stamp
        )
    )
    return True


def set_order_status(conn: Connection, accession: str, issuer: str, status: str) -> bool:
    c = t.orders.c
    res = conn.execute(
        update(t.orders)
        .where(c.accession_number == accession, c.accession_issuer == issuer)
        .values(status=status, updated_at=now())
    )
    return bool(res.rowcount)


def upsert_order_context(conn: Connection, values: dict[str, Any]) -> None:
    c = t.order_context.c
    key = (
        c.accession_number == values["accession_number"],
        c.accession_issuer == values["accession_issuer"],
    )
    if conn.execute(select(c.accession_number).where(*key)).first():
        conn.execute(update(t.order_context).where(*key).values(**values, updated_at=now()))
    else:
        conn.execute(insert(t.order_context).values(**values, updated_at=now()))


def orders_for_patients(
    conn: Connection, identifiers: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    if not identifiers:
        return []
    o, x = t.orders.c, t.order_context.c
    q = (
        select(
            t.orders,
            x.placer_order,
            x.filler_order,
            x.order_control,
            x.order_status,
            x.procedure_code,
            x.procedure_coding_system,
            x.nicip_code,  # R19: what the consortium's table mapped the code to
            x.snomed_code,
            x.body_region,
            x.clinical_details,
        )
        .select_from(
            t.orders.outerjoin(
                t.order_context,
                and_(
                    o.accession_number == x.accession_number,
                    o.accession_issuer == x.accession_issuer,
                ),
            )
        )
        .where(or_(*(and_(o.patient_issuer == i, o.patient_id == v) for i, v in identifiers)))
        .order_by(o.scheduled_start_date.desc())
    )
    return [dict(r) for r in conn.execute(q).mappings()]


# -- reports ---------------------------------------------------------------------------------


def add_report_version(conn: Connection, values: dict[str, Any]) -> int:
    """Store a new version of the report for (accession, issuer); earlier ones are superseded."""
    c = t.report.c
    key = (
        c.accession_number == values["accession_number"],
        c.accession_issuer == values["accession_issuer"],
    )
    last = conn.execute(select(func.max(c.version)).where(*key)).scalar_one()
    version = int(last or 0) + 1
    conn.execute(update(t.report).where(*key).values(superseded=True))
    conn.execute(
        insert(t.report).values(**values, version=version, superseded=False, created_at=now())
    )
    return version


def reports_for(conn: Connection, accession: str, issuer: str) -> list[dict[str, Any]]:
    c = t.report.c
    q = (
        select(t.report)
        .where(c.accession_number == accession, c.accession_issuer == issuer)
        .order_by(c.version)
    )
    return [dict(r) for r in conn.execute(q).mappings()]


def get_report(conn: Connection, pk: int) -> dict[str, Any] | None:
    r = conn.execute(select(t.report).where(t.report.c.pk == pk)).mappings().first()
    return dict(r) if r else None


def unmatched_reports(conn: Connection, limit: int = 500) -> list[dict[str, Any]]:
    """Current report versions whose (accession, issuer) names no stored study."""
    r, s = t.report.c, t.study.c
    matched = (
        select(s.pk)
        .where(
            s.accession_number == r.accession_number,
            or_(
                s.accession_issuer == r.accession_issuer,
                and_(s.accession_issuer.is_(None), s.trust_code == r.accession_issuer),
            ),
        )
        .exists()
    )
    q = select(t.report).where(r.superseded.is_(False), ~matched).order_by(r.pk).limit(limit)
    return [dict(row) for row in conn.execute(q).mappings()]
