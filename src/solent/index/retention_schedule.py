"""What the retention engine (R42) reads from the index: a study, the records of its person
at every trust, their studies' dates, ADT's death and visit dates, pathway flags; and the
studies old enough that their retention may have run out (``solent.services.retention_schedule``
decides which have)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, and_, func, insert, or_, select, update

from solent.index import schema as t
from solent.index.sql import now


def study_facts(conn: Connection, study_uid: str) -> dict[str, Any] | None:
    """The study and the record it is filed under (None: unknown)."""
    st, pa = t.study.c, t.patient.c
    row = (
        conn.execute(
            select(
                st.pk,
                st.study_uid,
                st.study_date,
                st.created_at,
                st.modalities,
                st.study_description,
                st.num_instances,
                st.trust_code,
                st.patient_pk,
                pa.issuer,
                pa.local_id,
                pa.nhs_number,
            )
            .select_from(t.study.join(t.patient, pa.pk == st.patient_pk))
            .where(st.study_uid == study_uid)
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


def person_records(conn: Connection, pks: Iterable[int]) -> list[dict[str, Any]]:
    """Each record with its birth date, ADT death and latest visit dates, and the latest date
    among its studies (a study without a date counts from when it was received)."""
    pa, pc, st = t.patient.c, t.patient_contact.c, t.study.c
    wanted = sorted(set(pks))
    rows = (
        conn.execute(
            select(
                pa.pk,
                pa.issuer,
                pa.local_id,
                pa.nhs_number,
                pa.birth_date,
                pc.death_date,
                pc.last_visit,
            )
            .select_from(t.patient.outerjoin(t.patient_contact, pc.patient_pk == pa.pk))
            .where(pa.pk.in_(wanted))
            .order_by(pa.pk)
        )
        .mappings()
        .all()
    )
    dated = dict(
        conn.execute(
            select(st.patient_pk, func.max(st.study_date))
            .where(st.patient_pk.in_(wanted), st.study_date.is_not(None), st.study_date != "")
            .group_by(st.patient_pk)
        ).all()
    )
    undated = dict(
        conn.execute(
            select(st.patient_pk, func.max(st.created_at))
            .where(st.patient_pk.in_(wanted), or_(st.study_date.is_(None), st.study_date == ""))
            .group_by(st.patient_pk)
        ).all()
    )
    return [
        {
            **r,
            "latest_study_date": dated.get(r["pk"]),
            "latest_undated_received": undated.get(r["pk"]),
        }
        for r in rows
    ]


def retired_keys(conn: Connection, pks: Iterable[int]) -> list[tuple[str, str]]:
    """(issuer, local ID) no longer naming a record (merged away, renumbered) that now
    resolve to one of these records: flags and holds placed on them still count."""
    r = t.retired_identifier.c
    rows = conn.execute(
        select(r.issuer, r.local_id).where(r.patient_pk.in_(sorted(set(pks)))).order_by(r.pk)
    )
    return [(str(i), str(p)) for i, p in rows]


def expiry_candidates(
    conn: Connection,
    *,
    dated_before: str,
    trusts: frozenset[str] | None,
    after_pk: int,
    limit: int,
) -> list[str]:
    """Study UIDs (by pk, after ``after_pk``) whose own date is before ``dated_before``
    (YYYYMMDD) or missing, that still hold instances and wait for no retention deletion: no
    rule keeps a study for less than the adult period after its own date, so no other study
    can have expired. ``trusts`` limits them to records those trusts issued."""
    st, pa, d = t.study.c, t.patient.c, t.retention_deletion.c
    pending = select(d.pk).where(d.study_uid == st.study_uid, d.status == "pending").exists()
    q = (
        select(st.study_uid)
        .select_from(t.study.join(t.patient, pa.pk == st.patient_pk))
        .where(
            st.pk > after_pk,
            st.num_instances > 0,
            or_(st.study_date.is_(None), st.study_date < dated_before),
            ~pending,
        )
        .order_by(st.pk)
        .limit(limit)
    )
    if trusts is not None:
        q = q.where(pa.issuer.in_(sorted(trusts)))
    return [str(u) for (u,) in conn.execute(q)]


def person_key_exists(conn: Connection, issuer: str, local_id: str) -> bool:
    pa = t.patient.c
    found = conn.execute(select(pa.pk).where(pa.issuer == issuer, pa.local_id == local_id))
    return found.first() is not None


def current_refs(conn: Connection, study_uid: str) -> list[tuple[str, str]]:
    """(series UID, SOP Instance UID) of every instance the study holds now."""
    ic, se, st = t.instance.c, t.series.c, t.study.c
    rows = conn.execute(
        select(se.series_uid, ic.sop_instance_uid)
        .join(t.series, se.pk == ic.series_pk)
        .join(t.study, st.pk == se.study_pk)
        .where(st.study_uid == study_uid)
        .order_by(se.series_uid, ic.sop_instance_uid)
    )
    return [(str(a), str(b)) for a, b in rows]


def study_holds(conn: Connection, study_uid: str) -> list[dict[str, Any]]:
    """Unlifted legal holds placed on this study itself (as ``holds_covering`` shows them)."""
    h = t.legal_hold.c
    rows = conn.execute(
        select(h.pk, h.reference)
        .where(h.kind == "study", h.study_uid == study_uid, h.lifted_at.is_(None))
        .order_by(h.pk)
    )
    return [{"id": int(r.pk), "reference": r.reference} for r in rows]


def pending_deletion(conn: Connection, study_uid: str) -> int | None:
    d = t.retention_deletion.c
    row = conn.execute(
        select(d.pk).where(d.study_uid == study_uid, d.status == "pending").limit(1)
    ).first()
    return int(row[0]) if row else None


# -- pathway flags ------------------------------------------------------------------------------


def add_flag(
    conn: Connection,
    target: Mapping[str, str | None],
    kind: str,
    since: str | None,
    note: str,
    by: str,
    trust: str | None,
) -> int:
    result = conn.execute(
        insert(t.retention_flag).values(
            kind=kind,
            study_uid=target.get("study_uid"),
            issuer=target.get("issuer"),
            patient_id=target.get("patient_id"),
            since=since,
            note=note,
            set_by=by[:200],
            set_trust=trust,
            set_at=now(),
        )
    )
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


def remove_flag(conn: Connection, pk: int, by: str, reason: str) -> bool:
    """Remove a flag not removed yet; False when there is none."""
    f = t.retention_flag.c
    done = conn.execute(
        update(t.retention_flag)
        .where(f.pk == pk, f.removed_at.is_(None))
        .values(removed_by=by[:200], removed_at=now(), remove_reason=reason)
    )
    return done.rowcount == 1


def flag_rows(
    conn: Connection,
    *,
    active_only: bool = True,
    pk: int | None = None,
    study_uid: str | None = None,
    records: Iterable[tuple[str, str]] = (),
    trusts: frozenset[str] | None = None,
) -> list[dict[str, Any]]:
    """Flags, oldest first: on ``study_uid`` or on any of ``records`` (issuer, local ID) when
    either is given; ``trusts`` limits them to flags on those trusts' records or studies."""
    f, st, pa = t.retention_flag.c, t.study.c, t.patient.c
    q = select(t.retention_flag).order_by(f.pk).limit(1000)
    on = [and_(f.issuer == i, f.patient_id == p) for i, p in records]
    if study_uid is not None:
        on.append(f.study_uid == study_uid)
    if study_uid is not None or on:
        q = q.where(or_(*on))
    if trusts is not None:
        mine = sorted(trusts)
        their_study = (
            select(st.pk)
            .join(t.patient, pa.pk == st.patient_pk)
            .where(st.study_uid == f.study_uid, pa.issuer.in_(mine))
            .exists()
        )
        q = q.where(or_(f.issuer.in_(mine), and_(f.study_uid.is_not(None), their_study)))
    if active_only:
        q = q.where(f.removed_at.is_(None))
    if pk is not None:
        q = q.where(f.pk == pk)
    return [dict(r) for r in conn.execute(q).mappings()]
