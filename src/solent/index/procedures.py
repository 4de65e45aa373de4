"""SQL of procedure coding (R19) and of what prior prefetch reads (R47)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from sqlalchemy import Connection, insert, select, update

from solent.index import schema as t
from solent.index.sql import now


def record_study_procedure(conn: Connection, values: Mapping[str, Any]) -> None:
    """Insert or replace the coded procedure of one study."""
    c = t.study_procedure.c
    row = {k: v for k, v in values.items() if k in c and k != "updated_at"}
    if conn.execute(select(c.study_uid).where(c.study_uid == row["study_uid"])).first():
        conn.execute(
            update(t.study_procedure)
            .where(c.study_uid == row["study_uid"])
            .values(**row, updated_at=now())
        )
    else:
        conn.execute(insert(t.study_procedure).values(**row, updated_at=now()))


def study_procedures(conn: Connection, study_uids: Collection[str]) -> dict[str, dict[str, Any]]:
    if not study_uids:
        return {}
    c = t.study_procedure.c
    rows = conn.execute(select(t.study_procedure).where(c.study_uid.in_(list(study_uids))))
    return {r["study_uid"]: dict(r) for r in rows.mappings()}


def first_document(conn: Connection, study_uid: str) -> bytes | None:
    """The zlib DICOM JSON of one instance of the study (its first stored): the study-level
    attributes (Requested Procedure Code Sequence, Study Description) every instance repeats."""
    i, m = t.instance.c, t.instance_metadata.c
    row = conn.execute(
        select(m.json_z)
        .select_from(
            t.instance_metadata.join(t.instance, m.instance_pk == i.pk)
            .join(t.series, i.series_pk == t.series.c.pk)
            .join(t.study, t.series.c.study_pk == t.study.c.pk)
        )
        .where(t.study.c.study_uid == study_uid)
        .order_by(i.pk)
        .limit(1)
    ).first()
    return bytes(row[0]) if row else None


def order_with_context(
    conn: Connection,
    *,
    study_uid: str | None = None,
    accession: str | None = None,
    issuer: str | None = None,
) -> dict[str, Any] | None:
    """An order (worklist columns and its context) by (accession, issuer), else by the Study
    Instance UID it was given (the newest such order)."""
    o, x = t.orders.c, t.order_context.c
    q = select(
        t.orders,
        x.procedure_code,
        x.procedure_coding_system,
        x.nicip_code,
        x.snomed_code,
        x.body_region,
    ).select_from(
        t.orders.outerjoin(
            t.order_context,
            (x.accession_number == o.accession_number) & (x.accession_issuer == o.accession_issuer),
        )
    )
    if accession and issuer:
        q = q.where(o.accession_number == accession, o.accession_issuer == issuer)
    elif study_uid:
        q = q.where(o.study_instance_uid == study_uid).order_by(o.updated_at.desc())
    else:
        return None
    row = conn.execute(q.limit(1)).mappings().first()
    return dict(row) if row else None
