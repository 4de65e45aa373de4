"""Legal holds (R43) and retention deletions awaiting approval (R44) in the index.

A hold names a study, a patient record (issuer, local ID) or a person (NHS number: the records
of every trust); it covers a study while it is not lifted. A retention deletion is an IOCM note
titled 113039 kept with what it lists until a second person decides it
(``solent.services.retention``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, exists, insert, or_, select, update

from solent.index import schema as t
from solent.index.sql import now

HOLD_KINDS = ("study", "patient", "nhs")


@dataclass(frozen=True, slots=True)
class StudyOwner:
    """The patient record a study is filed under (what a hold is matched against)."""

    study_uid: str
    issuer: str
    local_id: str
    nhs_number: str | None


def study_owner(conn: Connection, study_uid: str) -> StudyOwner | None:
    st, pa = t.study.c, t.patient.c
    row = conn.execute(
        select(pa.issuer, pa.local_id, pa.nhs_number)
        .select_from(t.study.join(t.patient, pa.pk == st.patient_pk))
        .where(st.study_uid == study_uid)
    ).first()
    if row is None:
        return None
    return StudyOwner(study_uid, str(row.issuer), str(row.local_id), row.nhs_number or None)


def owner_of_instance(conn: Connection, sop_uid: str) -> StudyOwner | None:
    """The study an instance is filed in now (a note naming a study merged into another is
    filed into that one, R57) and its record."""
    ic, se, st = t.instance.c, t.series.c, t.study.c
    study_uid = conn.execute(
        select(st.study_uid)
        .join(t.series, se.study_pk == st.pk)
        .join(t.instance, ic.series_pk == se.pk)
        .where(ic.sop_instance_uid == sop_uid)
    ).scalar()
    return None if study_uid is None else study_owner(conn, str(study_uid))


def holds_covering(conn: Connection, owner: StudyOwner) -> list[dict[str, Any]]:
    """The unlifted holds that cover this study: on it, on its record, or on its person."""
    h = t.legal_hold.c
    matches = [
        and_(h.kind == "study", h.study_uid == owner.study_uid),
        and_(h.kind == "patient", h.issuer == owner.issuer, h.patient_id == owner.local_id),
    ]
    if owner.nhs_number:
        matches.append(and_(h.kind == "nhs", h.nhs_number == owner.nhs_number))
    rows = conn.execute(
        select(h.pk, h.reference).where(h.lifted_at.is_(None), or_(*matches)).order_by(h.pk)
    )
    return [{"id": int(r.pk), "reference": r.reference} for r in rows]


def add_hold(
    conn: Connection,
    target: Mapping[str, str | None],
    reason: str,
    reference: str,
    by: str,
    trust: str | None = None,
) -> int:
    result = conn.execute(
        insert(t.legal_hold).values(
            placed_trust=trust,
            kind=target["kind"],
            study_uid=target.get("study_uid"),
            issuer=target.get("issuer"),
            patient_id=target.get("patient_id"),
            nhs_number=target.get("nhs_number"),
            reason=reason,
            reference=reference,
            placed_by=by[:200],
            placed_at=now(),
        )
    )
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


def lift_hold(conn: Connection, pk: int, by: str, reason: str) -> bool:
    """Lift an unlifted hold; False when there is no such hold or it is lifted already."""
    h = t.legal_hold.c
    done = conn.execute(
        update(t.legal_hold)
        .where(h.pk == pk, h.lifted_at.is_(None))
        .values(lifted_by=by[:200], lifted_at=now(), lift_reason=reason)
    )
    return done.rowcount == 1


def hold_rows(
    conn: Connection,
    *,
    active_only: bool,
    pk: int | None = None,
    trusts: frozenset[str] | None = None,
) -> list[dict[str, Any]]:
    """Holds, newest first; ``trusts`` limits them to those placed at those trusts or covering
    records those trusts issued (None: every hold)."""
    h, st, pa = t.legal_hold.c, t.study.c, t.patient.c
    q = select(t.legal_hold).order_by(h.pk.desc()).limit(1000)
    if trusts is not None:
        mine = sorted(trusts)
        their_study = exists().where(
            st.study_uid == h.study_uid, pa.pk == st.patient_pk, pa.issuer.in_(mine)
        )
        their_person = exists().where(pa.nhs_number == h.nhs_number, pa.issuer.in_(mine))
        q = q.where(
            or_(
                h.placed_trust.in_(mine),
                and_(h.kind == "patient", h.issuer.in_(mine)),
                and_(h.kind == "study", their_study),
                and_(h.kind == "nhs", their_person),
            )
        )
    if active_only:
        q = q.where(h.lifted_at.is_(None))
    if pk is not None:
        q = q.where(h.pk == pk)
    return [dict(r) for r in conn.execute(q).mappings()]


def add_deletion(
    conn: Connection,
    *,
    note_uid: str,
    code: str,
    owner: StudyOwner,
    requested_by: str,
    requester_user: str | None,
    refs: list[tuple[str, str]],
) -> int:
    result = conn.execute(
        insert(t.retention_deletion).values(
            requested_at=now(),
            note_uid=note_uid,
            code=code,
            study_uid=owner.study_uid,
            patient_issuer=owner.issuer,
            patient_id=owner.local_id,
            requested_by=requested_by[:200],
            requester_user=requester_user,
            refs=json.dumps([list(r) for r in refs]),
            status="pending",
        )
    )
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


def deletion_rows(
    conn: Connection,
    *,
    status: str | None,
    trusts: frozenset[str] | None,
    pk: int | None = None,
) -> list[dict[str, Any]]:
    """Retention deletions, newest first; ``trusts`` limits them to those records' issuers
    (None: every trust)."""
    d = t.retention_deletion.c
    q = select(t.retention_deletion).order_by(d.pk.desc()).limit(1000)
    if status is not None:
        q = q.where(d.status == status)
    if trusts is not None:
        q = q.where(d.patient_issuer.in_(sorted(trusts)))
    if pk is not None:
        q = q.where(d.pk == pk)
    return [dict(r) for r in conn.execute(q).mappings()]


def decide_deletion(
    conn: Connection, pk: int, status: str, by: str, note: str, outcome: dict[str, Any] | None
) -> bool:
    """Record the decision on a pending deletion; False when it is no longer pending (a
    concurrent decision won: its row lock makes this wait, then find it decided). Called
    before anything is withdrawn, so two approvals never withdraw twice."""
    d = t.retention_deletion.c
    done = conn.execute(
        update(t.retention_deletion)
        .where(d.pk == pk, d.status == "pending")
        .values(
            status=status,
            decided_by=by[:200],
            decided_at=now(),
            decision_note=note,
            outcome=json.dumps(outcome, sort_keys=True) if outcome is not None else None,
        )
    )
    return done.rowcount == 1


def record_outcome(conn: Connection, pk: int, outcome: dict[str, Any]) -> None:
    """What an approval withdrew (after ``decide_deletion`` claimed the row)."""
    conn.execute(
        update(t.retention_deletion)
        .where(t.retention_deletion.c.pk == pk)
        .values(outcome=json.dumps(outcome, sort_keys=True))
    )
