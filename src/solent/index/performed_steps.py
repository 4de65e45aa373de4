"""SQL of Modality Performed Procedure Steps (MPPS, PS3.4 Annex F; R17): what a modality says
it is doing (IN PROGRESS) and did (COMPLETED, DISCONTINUED), and the status of the orders the
steps performed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, and_, insert, or_, select, update

from solent.index import schema as t
from solent.index.sql import now

IN_PROGRESS = "IN PROGRESS"
FINAL = frozenset({"COMPLETED", "DISCONTINUED"})
#: The worklist status an order takes when a step performing it reports (Modality Worklist
#: lists SCHEDULED, ARRIVED and READY orders only, so a started order leaves the worklist).
ORDER_STATUS = {IN_PROGRESS: "STARTED", "COMPLETED": "COMPLETED", "DISCONTINUED": "DISCONTINUED"}


def get_step(conn: Connection, sop_uid: str) -> dict[str, Any] | None:
    row = (
        conn.execute(select(t.performed_step).where(t.performed_step.c.sop_instance_uid == sop_uid))
        .mappings()
        .first()
    )
    return dict(row) if row else None


def insert_step(conn: Connection, values: dict[str, Any]) -> None:
    stamp = now()
    conn.execute(insert(t.performed_step).values(**values, created_at=stamp, updated_at=stamp))


def update_step(conn: Connection, sop_uid: str, values: dict[str, Any]) -> None:
    conn.execute(
        update(t.performed_step)
        .where(t.performed_step.c.sop_instance_uid == sop_uid)
        .values(**values, updated_at=now())
    )


def steps_for(
    conn: Connection, trust: str | None, study_uid: str | None, limit: int = 200
) -> list[dict[str, Any]]:
    """The newest steps of a trust (all trusts for None), optionally of one study."""
    c = t.performed_step.c
    q = select(t.performed_step).order_by(c.updated_at.desc()).limit(limit)
    if trust is not None:
        q = q.where(c.trust_code == trust)
    if study_uid:
        q = q.where(c.study_uid == study_uid)
    return [dict(r) for r in conn.execute(q).mappings()]


def mark_orders(
    conn: Connection, trust: str, performed: Iterable[tuple[str, str]], status: str
) -> list[str]:
    """Set the worklist status of the trust's orders a step performed, named by (accession
    number, study UID) pairs from its Scheduled Step Attributes; the accession numbers set."""
    o = t.orders.c
    done: list[str] = []
    for accession, study_uid in performed:
        match = []
        if accession:
            match.append(o.accession_number == accession)
        if study_uid:
            match.append(o.study_instance_uid == study_uid)
        if not match:
            continue
        rows = conn.execute(
            select(o.accession_number, o.accession_issuer).where(
                and_(*match), or_(o.patient_issuer == trust, o.accession_issuer == trust)
            )
        ).all()
        for acc, issuer in rows:
            conn.execute(
                update(t.orders)
                .where(o.accession_number == acc, o.accession_issuer == issuer)
                .values(status=status, updated_at=now())
            )
            done.append(str(acc))
    return done


def held_instances(conn: Connection, sop_uids: Iterable[str]) -> set[str]:
    """Those of ``sop_uids`` the archive holds (an instance an IOCM note withdrew is not)."""
    wanted = list(sop_uids)
    held: set[str] = set()
    uid = t.instance.c.sop_instance_uid
    for start in range(0, len(wanted), 500):  # bound the IN list (SQLite's variable limit)
        chunk = wanted[start : start + 500]
        held.update(conn.execute(select(uid).where(uid.in_(chunk))).scalars())
    return held
