"""SQL of the audit trail: append-only rows chained by SHA-256, and the checks that prove it.

Each record's hash covers its sequence number, the previous record's hash and every field, so an
edited, deleted, inserted or reordered record breaks the chain. ``audit_head`` remembers the last
sequence number and hash, so truncating the tail is caught as well; its row lock serialises
appends on PostgreSQL (SQLite serialises writers anyway).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, insert, select, update
from sqlalchemy.sql.elements import ColumnElement

from solent.index import schema as t
from solent.index.sql import Index

GENESIS = "0" * 64

# The fields a record's hash covers, in the order they are hashed.
FIELDS = (
    "at",
    "action",
    "outcome",
    "actor_kind",
    "actor_name",
    "actor_trust",
    "actor_roles",
    "actor_address",
    "patient_issuer",
    "patient_id",
    "nhs_number",
    "study_uid",
    "purpose",
    "detail",
)


def record_hash(seq: int, prev_hash: str, fields: dict[str, Any]) -> str:
    payload = json.dumps(
        {"seq": seq, "prev": prev_hash, **{k: fields.get(k) for k in FIELDS}},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def append(conn: Connection, fields: dict[str, Any]) -> int:
    """Append one record inside the caller's write transaction; returns its sequence number."""
    head = conn.execute(
        select(t.audit_head.c.seq, t.audit_head.c.hash)
        .where(t.audit_head.c.id == 1)
        .with_for_update()
    ).first()
    if head is None:
        # First record ever; a concurrent first insert fails on the primary key and is retried.
        conn.execute(insert(t.audit_head).values(id=1, seq=0, hash=GENESIS))
        last_seq, last_hash = 0, GENESIS
    else:
        last_seq, last_hash = int(head.seq), str(head.hash)
    seq = last_seq + 1
    values = {k: fields.get(k) for k in FIELDS}
    digest = record_hash(seq, last_hash, values)
    conn.execute(insert(t.audit_log).values(seq=seq, prev_hash=last_hash, hash=digest, **values))
    conn.execute(update(t.audit_head).where(t.audit_head.c.id == 1).values(seq=seq, hash=digest))
    return seq


def patient_of_study(conn: Connection, study_uid: str) -> tuple[str, str, str | None] | None:
    """(issuer, local id, NHS number) of the patient a study is filed under."""
    p, s = t.patient.c, t.study.c
    r = conn.execute(
        select(p.issuer, p.local_id, p.nhs_number)
        .select_from(t.study.join(t.patient, s.patient_pk == p.pk))
        .where(s.study_uid == study_uid)
    ).first()
    return (r.issuer, r.local_id, r.nhs_number) if r else None


@dataclass
class VerifyReport:
    records: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


def verify(index: Index, batch: int = 5000) -> VerifyReport:
    """Walk the whole chain; every problem names the sequence number where it is seen."""
    report = VerifyReport()
    expected, prev = 1, GENESIS
    last = 0
    while True:
        with index.read() as conn:
            rows = (
                conn.execute(
                    select(t.audit_log)
                    .where(t.audit_log.c.seq > last)
                    .order_by(t.audit_log.c.seq)
                    .limit(batch)
                )
                .mappings()
                .all()
            )
        if not rows:
            break
        for r in rows:
            seq = int(r["seq"])
            report.records += 1
            if seq != expected:
                report.problems.append(
                    f"records {expected}..{seq - 1} are missing (deleted) before record {seq}"
                )
            if r["prev_hash"] != prev:
                report.problems.append(
                    f"record {seq} does not follow the record before it "
                    "(a record was deleted, inserted or reordered)"
                )
            if record_hash(seq, r["prev_hash"], dict(r)) != r["hash"]:
                report.problems.append(f"record {seq} was changed after it was written")
            # (Timestamps are not compared: nodes' clocks differ; the chain proves the order.)
            expected, prev = seq + 1, r["hash"]
        last = int(rows[-1]["seq"])
    with index.read() as conn:
        head = conn.execute(select(t.audit_head).where(t.audit_head.c.id == 1)).first()
    head_seq, head_hash = (int(head.seq), str(head.hash)) if head else (0, GENESIS)
    if head_seq != expected - 1 or head_hash != prev:
        report.problems.append(
            f"the trail ends at record {expected - 1} but {head_seq} were written "
            "(records at the end were deleted or the head was changed)"
        )
    return report


def search(
    index: Index,
    *,
    patient_issuer: str | None = None,
    patient_id: str | None = None,
    nhs_number: str | None = None,
    actor_name: str | None = None,
    study_uid: str | None = None,
    action: str | None = None,
    since: str | None = None,
    until: str | None = None,
    after_seq: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    c = t.audit_log.c
    conds: list[ColumnElement[bool]] = [c.seq > after_seq]
    if patient_id:
        conds.append(c.patient_id == patient_id)
    if patient_issuer:
        conds.append(c.patient_issuer == patient_issuer)
    if nhs_number:
        conds.append(c.nhs_number == nhs_number)
    if actor_name:
        conds.append(c.actor_name == actor_name)
    if study_uid:
        conds.append(c.study_uid == study_uid)
    if action:
        conds.append(c.action == action)
    if since:
        conds.append(c.at >= since)
    if until:
        conds.append(c.at < until)
    q = select(t.audit_log).where(and_(*conds)).order_by(c.seq).limit(limit)
    with index.read() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def iter_records(index: Index, after_seq: int = 0, batch: int = 2000) -> Iterator[dict[str, Any]]:
    last = after_seq
    while True:
        rows = search(index, after_seq=last, limit=batch)
        if not rows:
            return
        yield from rows
        last = int(rows[-1]["seq"])


__all__ = ["GENESIS", "VerifyReport", "append", "iter_records", "search", "verify"]
