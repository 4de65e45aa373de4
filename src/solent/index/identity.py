"""SQL of the cross-trust patient index: records, links, retired identifiers, history, work queue.

Every function takes the caller's open connection so the identity service can make one HL7
message, its effects and its journal entry a single transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    Connection,
    String,
    and_,
    any_,
    bindparam,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from solent.index import schema as t
from solent.index.sql import now

PatientRow = dict[str, Any]

_PATIENT_COLUMNS = (
    "pk",
    "issuer",
    "local_id",
    "name",
    "birth_date",
    "sex",
    "nhs_number",
    "nhs_number_valid",
    "nhs_number_verified",
    "placeholder",
    "created_at",
    "updated_at",
)


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), default=str)


def _load(value: str | None) -> Any:
    return None if value is None else json.loads(value)


# -- patient records -------------------------------------------------------------------------


def _patient_select() -> Any:
    return select(*(t.patient.c[name] for name in _PATIENT_COLUMNS))


def get_patient(conn: Connection, pk: int) -> PatientRow | None:
    r = conn.execute(_patient_select().where(t.patient.c.pk == pk)).mappings().first()
    return dict(r) if r else None


def get_patients(conn: Connection, pks: Iterable[int]) -> list[PatientRow]:
    keys = sorted(set(pks))
    if not keys:
        return []
    q = _patient_select().where(t.patient.c.pk.in_(keys)).order_by(t.patient.c.pk)
    return [dict(r) for r in conn.execute(q).mappings()]


def linkable_patients(
    conn: Connection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], PatientRow]:
    """(issuer, local ID) -> record, of those records that can have a linked record at all:
    an explicit "linked" decision, or a valid, traced NHS number that another trust's record
    carries valid and traced too (the two ways ``IdentityLinks`` walks). One query for a page
    of query results; a record without either is alone and needs no walk."""
    q = linkable_select(keys, conn.dialect.name)
    if q is None:
        return {}
    rows = [dict(r) for r in conn.execute(q).mappings()]
    return {(r["issuer"], r["local_id"]): r for r in rows}


def linkable_select(keys: Iterable[tuple[str, str]], dialect: str = "sqlite") -> Any:
    """The SELECT of ``linkable_patients`` (None for no keys); its plan is checked in
    tests/interop/test_query_plans_postgres.py: index look-ups only, whatever the size.

    On PostgreSQL each trust's IDs go as one array (``= ANY``), so the statement's text does
    not change with the page (SQLAlchemy's compiled cache and psycopg's prepared statements
    serve it); an IN list is compiled anew for every count of IDs."""
    by_issuer: dict[str, set[str]] = {}
    for issuer, local_id in keys:
        by_issuer.setdefault(issuer, set()).add(local_id)
    if not by_issuer:
        return None
    p, link = t.patient.c, t.patient_link.c
    same = t.patient.alias("p_same_nhs")
    # One EXISTS per side of the pair: each is a probe of its own index (an OR of the two
    # was a bitmap OR, or on a small table a hashed scan of all links).
    forward = select(link.pk).where(link.status == "linked", link.patient_a == p.pk)
    backward = select(link.pk).where(link.status == "linked", link.patient_b == p.pk)
    shared = select(same.c.pk).where(
        same.c.nhs_number == p.nhs_number,
        same.c.issuer != p.issuer,
        same.c.nhs_number_valid.is_(True),
        same.c.nhs_number_verified.is_(True),
    )

    def among(issuer: str, ids: set[str], n: int) -> Any:
        if dialect != "postgresql":
            return and_(p.issuer == issuer, p.local_id.in_(sorted(ids)))
        values = bindparam(f"linkable_ids_{n}", sorted(ids), type_=ARRAY(String))
        return and_(p.issuer == issuer, p.local_id == any_(values))

    q = _patient_select().where(
        or_(*(among(i, ids, n) for n, (i, ids) in enumerate(sorted(by_issuer.items())))),
        or_(
            forward.exists(),
            backward.exists(),
            and_(p.nhs_number_valid.is_(True), p.nhs_number_verified.is_(True), shared.exists()),
        ),
    )
    return q.order_by(p.pk)


def find_patient(conn: Connection, issuer: str, local_id: str) -> PatientRow | None:
    c = t.patient.c
    q = _patient_select().where(c.issuer == issuer, c.local_id == local_id)
    r = conn.execute(q).mappings().first()
    return dict(r) if r else None


def lock_patient(conn: Connection, pk: int) -> None:
    """Serialise concurrent identity changes of one record (PostgreSQL row lock)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(t.patient.c.pk).where(t.patient.c.pk == pk).with_for_update())


def patients_by_nhs(conn: Connection, nhs_number: str) -> list[PatientRow]:
    q = _patient_select().where(t.patient.c.nhs_number == nhs_number).order_by(t.patient.c.pk)
    return [dict(r) for r in conn.execute(q).mappings()]


def patients_by_nhs_many(conn: Connection, numbers: Iterable[str]) -> list[PatientRow]:
    """``patients_by_nhs`` of several numbers in one query (ordered by pk)."""
    keys = sorted(set(numbers))
    if not keys:
        return []
    q = _patient_select().where(t.patient.c.nhs_number.in_(keys)).order_by(t.patient.c.pk)
    return [dict(r) for r in conn.execute(q).mappings()]


def trust_exists(conn: Connection, code: str) -> bool:
    return conn.execute(select(t.trust.c.code).where(t.trust.c.code == code)).first() is not None


def insert_patient(conn: Connection, issuer: str, local_id: str, values: dict[str, Any]) -> int:
    stamp = now()
    name = values.get("name")
    res = conn.execute(
        insert(t.patient).values(
            issuer=issuer,
            local_id=local_id,
            name=name,
            name_upper=name.upper() if name else None,
            birth_date=values.get("birth_date"),
            sex=values.get("sex"),
            nhs_number=values.get("nhs_number"),
            nhs_number_valid=values.get("nhs_number_valid"),
            nhs_number_verified=bool(values.get("nhs_number_verified")),
            placeholder=False,
            created_at=stamp,
            updated_at=stamp,
        )
    )
    return int(res.inserted_primary_key[0])  # type: ignore[index]


def pds_demographics(conn: Connection, pk: int) -> bool:
    """R6: the record's name, birth date and sex were last set by a message traced on PDS."""
    c = t.patient.c
    return bool(conn.execute(select(c.pds_demographics).where(c.pk == pk)).scalar())


def mark_pds_demographics(conn: Connection, pk: int) -> None:
    """Mark the record's demographics PDS-sourced without touching its modification time."""
    conn.execute(update(t.patient).where(t.patient.c.pk == pk).values(pds_demographics=True))


def update_patient(conn: Connection, pk: int, values: dict[str, Any]) -> None:
    changes = dict(values)
    if "name" in changes:
        changes["name_upper"] = changes["name"].upper() if changes["name"] else None
    conn.execute(update(t.patient).where(t.patient.c.pk == pk).values(**changes, updated_at=now()))


def get_contact(conn: Connection, pk: int) -> dict[str, Any] | None:
    r = (
        conn.execute(select(t.patient_contact).where(t.patient_contact.c.patient_pk == pk))
        .mappings()
        .first()
    )
    return dict(r) if r else None


def upsert_contact(conn: Connection, pk: int, values: dict[str, Any]) -> None:
    c = t.patient_contact.c
    if conn.execute(select(c.patient_pk).where(c.patient_pk == pk)).first():
        conn.execute(
            update(t.patient_contact).where(c.patient_pk == pk).values(**values, updated_at=now())
        )
    else:
        conn.execute(
            insert(t.patient_contact).values(
                patient_pk=pk, **{"sensitive": False, **values}, updated_at=now()
            )
        )


# -- retired identifiers ---------------------------------------------------------------------


def find_retired(conn: Connection, issuer: str, local_id: str) -> dict[str, Any] | None:
    c = t.retired_identifier.c
    r = (
        conn.execute(select(t.retired_identifier).where(c.issuer == issuer, c.local_id == local_id))
        .mappings()
        .first()
    )
    return dict(r) if r else None


def retired_of(conn: Connection, pks: Iterable[int]) -> list[dict[str, Any]]:
    keys = sorted(set(pks))
    if not keys:
        return []
    c = t.retired_identifier.c
    q = select(t.retired_identifier).where(c.patient_pk.in_(keys)).order_by(c.pk)
    return [dict(r) for r in conn.execute(q).mappings()]


def add_retired(conn: Connection, issuer: str, local_id: str, patient_pk: int, reason: str) -> None:
    c = t.retired_identifier.c
    conn.execute(delete(t.retired_identifier).where(c.issuer == issuer, c.local_id == local_id))
    conn.execute(
        insert(t.retired_identifier).values(
            issuer=issuer, local_id=local_id, patient_pk=patient_pk, reason=reason, retired_at=now()
        )
    )


def remove_retired(conn: Connection, issuer: str, local_id: str) -> None:
    c = t.retired_identifier.c
    conn.execute(delete(t.retired_identifier).where(c.issuer == issuer, c.local_id == local_id))


# -- links -----------------------------------------------------------------------------------


def link_rows(conn: Connection, pks: Iterable[int]) -> list[dict[str, Any]]:
    keys = sorted(set(pks))
    if not keys:
        return []
    c = t.patient_link.c
    q = select(t.patient_link).where(or_(c.patient_a.in_(keys), c.patient_b.in_(keys)))
    return [dict(r) for r in conn.execute(q.order_by(c.pk)).mappings()]


def get_link(conn: Connection, a: int, b: int) -> dict[str, Any] | None:
    lo, hi = min(a, b), max(a, b)
    c = t.patient_link.c
    r = (
        conn.execute(select(t.patient_link).where(c.patient_a == lo, c.patient_b == hi))
        .mappings()
        .first()
    )
    return dict(r) if r else None


def set_link(conn: Connection, a: int, b: int, status: str, source: str, actor: str) -> None:
    lo, hi = min(a, b), max(a, b)
    c = t.patient_link.c
    values = {"status": status, "source": source, "updated_by": actor, "updated_at": now()}
    if get_link(conn, lo, hi):
        conn.execute(
            update(t.patient_link).where(c.patient_a == lo, c.patient_b == hi).values(**values)
        )
    else:
        conn.execute(insert(t.patient_link).values(patient_a=lo, patient_b=hi, **values))


def delete_link(conn: Connection, a: int, b: int) -> None:
    c = t.patient_link.c
    conn.execute(delete(t.patient_link).where(c.patient_a == min(a, b), c.patient_b == max(a, b)))


# -- merge and renumber ----------------------------------------------------------------------


def study_uids_of(conn: Connection, pk: int) -> list[str]:
    c = t.study.c
    return [str(u) for u in conn.execute(select(c.study_uid).where(c.patient_pk == pk)).scalars()]


def move_record(conn: Connection, source_pk: int, target_pk: int) -> None:
    """Move everything filed under ``source_pk`` to ``target_pk`` and delete the source row."""
    conn.execute(
        update(t.study).where(t.study.c.patient_pk == source_pk).values(patient_pk=target_pk)
    )
    conn.execute(
        update(t.break_glass)
        .where(t.break_glass.c.patient_pk == source_pk)
        .values(patient_pk=target_pk)
    )
    conn.execute(
        update(t.retired_identifier)
        .where(t.retired_identifier.c.patient_pk == source_pk)
        .values(patient_pk=target_pk)
    )
    for row in link_rows(conn, [source_pk]):
        other = row["patient_b"] if row["patient_a"] == source_pk else row["patient_a"]
        delete_link(conn, row["patient_a"], row["patient_b"])
        if other != target_pk and get_link(conn, other, target_pk) is None:
            set_link(conn, other, target_pk, row["status"], row["source"], row["updated_by"])
    _carry_retention_inputs(conn, source_pk, target_pk)
    conn.execute(delete(t.patient_contact).where(t.patient_contact.c.patient_pk == source_pk))
    conn.execute(delete(t.patient).where(t.patient.c.pk == source_pk))


def _carry_retention_inputs(conn: Connection, source_pk: int, target_pk: int) -> None:
    """The merged-away record's date of death and latest visit (R42) go with its studies: the
    later of each is kept (a retention date may only grow by a merge)."""
    source = get_contact(conn, source_pk) or {}
    target = get_contact(conn, target_pk) or {}
    carried = {
        k: source[k]
        for k in ("death_date", "last_visit")
        if source.get(k) and (not target.get(k) or source[k] > target[k])
    }
    if carried:
        upsert_contact(conn, target_pk, carried)


def rename_patient(conn: Connection, pk: int, local_id: str) -> None:
    conn.execute(
        update(t.patient).where(t.patient.c.pk == pk).values(local_id=local_id, updated_at=now())
    )


def rename_order_patient(conn: Connection, issuer: str, old_id: str, new_id: str) -> int:
    c = t.orders.c
    res = conn.execute(
        update(t.orders)
        .where(c.patient_issuer == issuer, c.patient_id == old_id)
        .values(patient_id=new_id, updated_at=now())
    )
    return int(res.rowcount)


# -- history ---------------------------------------------------------------------------------


def add_event(
    conn: Connection,
    *,
    kind: str,
    actor: str,
    patient_pk: int | None,
    other_patient_pk: int | None = None,
    issuer: str | None = None,
    local_id: str | None = None,
    message_pk: int | None = None,
    before: Any = None,
    after: Any = None,
    reverses: int | None = None,
) -> int:
    res = conn.execute(
        insert(t.identity_event).values(
            at=now(),
            kind=kind,
            patient_pk=patient_pk,
            other_patient_pk=other_patient_pk,
            issuer=issuer,
            local_id=local_id,
            actor=actor,
            message_pk=message_pk,
            before=_dump(before),
            after=_dump(after),
            reverses=reverses,
        )
    )
    pk = int(res.inserted_primary_key[0])  # type: ignore[index]
    if reverses is not None:
        conn.execute(
            update(t.identity_event).where(t.identity_event.c.pk == reverses).values(reversed_by=pk)
        )
    return pk


def _event(r: Any) -> dict[str, Any]:
    d = dict(r)
    d["before"], d["after"] = _load(d["before"]), _load(d["after"])
    return d


def get_event(conn: Connection, pk: int) -> dict[str, Any] | None:
    r = conn.execute(select(t.identity_event).where(t.identity_event.c.pk == pk)).mappings().first()
    return _event(r) if r else None


def events_for(
    conn: Connection, pks: Iterable[int], identifiers: Iterable[tuple[str, str]]
) -> list[dict[str, Any]]:
    c = t.identity_event.c
    keys = sorted(set(pks))
    conds: list[Any] = []
    if keys:
        conds += [c.patient_pk.in_(keys), c.other_patient_pk.in_(keys)]
    conds += [and_(c.issuer == i, c.local_id == v) for i, v in set(identifiers)]
    if not conds:
        return []
    m = t.hl7_message.c
    q = (
        select(
            t.identity_event,
            m.control_id.label("message_control_id"),
            m.sender.label("message_sender"),
            m.message_type.label("message_type"),
        )
        .select_from(t.identity_event.outerjoin(t.hl7_message, c.message_pk == m.pk))
        .where(or_(*conds))
        .order_by(c.pk)
    )
    return [_event(r) for r in conn.execute(q).mappings()]


# -- data-quality work queue -----------------------------------------------------------------


def add_work_item(
    conn: Connection,
    *,
    kind: str,
    detail: str,
    issuer: str | None = None,
    local_id: str | None = None,
    patient_pk: int | None = None,
    nhs_number: str | None = None,
    message_pk: int | None = None,
) -> int:
    c = t.data_quality.c
    same = conn.execute(
        select(c.pk).where(
            c.status == "open",
            c.kind == kind,
            c.issuer == issuer,
            c.local_id == local_id,
            c.detail == detail,
        )
    ).first()
    if same:
        return int(same.pk)
    res = conn.execute(
        insert(t.data_quality).values(
            at=now(),
            kind=kind,
            status="open",
            issuer=issuer,
            local_id=local_id,
            patient_pk=patient_pk,
            nhs_number=nhs_number,
            detail=detail,
            message_pk=message_pk,
        )
    )
    return int(res.inserted_primary_key[0])  # type: ignore[index]


def work_items(
    conn: Connection, *, status: str | None = "open", patient_pks: Iterable[int] | None = None
) -> list[dict[str, Any]]:
    c = t.data_quality.c
    q = select(t.data_quality).order_by(c.pk)
    if status:
        q = q.where(c.status == status)
    if patient_pks is not None:
        q = q.where(c.patient_pk.in_(sorted(set(patient_pks))))
    return [dict(r) for r in conn.execute(q).mappings()]


def resolve_work_item(conn: Connection, pk: int, actor: str) -> bool:
    c = t.data_quality.c
    res = conn.execute(
        update(t.data_quality)
        .where(c.pk == pk, c.status == "open")
        .values(status="resolved", resolved_by=actor, resolved_at=now())
    )
    return bool(res.rowcount)


# -- studies of records ----------------------------------------------------------------------


def studies_of(conn: Connection, pks: Iterable[int]) -> list[dict[str, Any]]:
    """Studies of the given records, newest first, each with its own record's identifiers."""
    keys = sorted(set(pks))
    if not keys:
        return []
    s, p = t.study.c, t.patient.c
    q = (
        select(
            s.pk.label("study_pk"),
            s.study_uid,
            s.study_date,
            s.study_time,
            s.accession_number,
            s.accession_issuer,
            s.study_description,
            s.modalities,
            s.num_series,
            s.num_instances,
            s.trust_code,
            s.patient_pk,
            p.issuer,
            p.local_id,
            p.name,
            p.birth_date,
            p.sex,
            p.nhs_number,
        )
        .select_from(t.study.join(t.patient, s.patient_pk == p.pk))
        .where(s.patient_pk.in_(keys))
        .order_by(s.study_date.desc(), s.pk.desc())
    )
    return [dict(r) for r in conn.execute(q).mappings()]


def study_by_uid(conn: Connection, study_uid: str) -> dict[str, Any] | None:
    s = t.study.c
    r = conn.execute(select(t.study).where(s.study_uid == study_uid)).mappings().first()
    return dict(r) if r else None


def study_by_pk(conn: Connection, pk: int) -> dict[str, Any] | None:
    r = conn.execute(select(t.study).where(t.study.c.pk == pk)).mappings().first()
    return dict(r) if r else None


def studies_by_accession(conn: Connection, accession: str, issuer: str) -> list[dict[str, Any]]:
    """Studies carrying (accession, issuer); a study without an explicit accession issuer
    is scoped to the trust that sent it (R16: never accession alone)."""
    s = t.study.c
    q = select(t.study).where(
        s.accession_number == accession,
        or_(
            s.accession_issuer == issuer,
            and_(s.accession_issuer.is_(None), s.trust_code == issuer),
        ),
    )
    return [dict(r) for r in conn.execute(q).mappings()]


def series_of(conn: Connection, study_pk: int) -> list[dict[str, Any]]:
    c = t.series.c
    q = select(t.series).where(c.study_pk == study_pk).order_by(c.series_number, c.pk)
    return [dict(r) for r in conn.execute(q).mappings()]


# -- relationships that are never a link or a merge (R58) ------------------------------------


def set_relation(
    conn: Connection,
    patient_pk: int,
    relationship: str,
    related: tuple[str, str],
    source: str,
    actor: str,
) -> tuple[bool, dict[str, Any] | None]:
    """Record (or change) ``patient_pk``'s ``relationship`` (``mother``) as the record
    ``related`` (issuer, local ID) names: (whether anything changed, the row replaced)."""
    r = t.patient_relation.c
    old = (
        conn.execute(
            select(t.patient_relation).where(
                r.patient_pk == patient_pk, r.relationship == relationship
            )
        )
        .mappings()
        .first()
    )
    values = {
        "related_issuer": related[0],
        "related_local_id": related[1],
        "source": source,
        "updated_by": actor[:200],
        "updated_at": now(),
    }
    if old is None:
        conn.execute(
            insert(t.patient_relation).values(
                patient_pk=patient_pk, relationship=relationship, **values
            )
        )
        return True, None
    if (old["related_issuer"], old["related_local_id"]) == related:
        return False, None
    conn.execute(update(t.patient_relation).where(r.pk == old["pk"]).values(**values))
    return True, dict(old)


def relations_of(conn: Connection, patient_pks: Iterable[int]) -> list[dict[str, Any]]:
    """The relationships these records carry (a baby's mother)."""
    r = t.patient_relation.c
    keys = sorted(set(patient_pks))
    if not keys:
        return []
    q = select(t.patient_relation).where(r.patient_pk.in_(keys)).order_by(r.pk)
    return [dict(x) for x in conn.execute(q).mappings()]


def relations_naming(
    conn: Connection, identifiers: Iterable[tuple[str, str]]
) -> list[dict[str, Any]]:
    """The relationships that name one of these identifiers (the babies of a mother)."""
    r = t.patient_relation.c
    conds = [and_(r.related_issuer == i, r.related_local_id == v) for i, v in set(identifiers)]
    if not conds:
        return []
    q = select(t.patient_relation).where(or_(*conds)).order_by(r.pk)
    return [dict(x) for x in conn.execute(q).mappings()]
