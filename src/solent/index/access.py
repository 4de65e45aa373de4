"""SQL of the legitimate-relationship rule: which patient records a set of trusts may see.

A record is *anchored* at a trust when it was issued by the trust or has a study there, or the
user holds a live break-glass grant for it. A record *linked* to an anchored record is visible
too, which is what makes cross-trust viewing for direct care work. Links follow the regional
identity rule (services/identity.py): an explicit ``patient_link`` "linked" decision, or the same
valid, traced NHS number at another trust with agreeing date of birth and sex, unless an explicit
"unlinked" decision blocks it. (Links are followed one step, not transitively.) The patient of
an order placed at the trust counts as anchored through its NHS number, before any image exists,
when the order's own record traced that number and its date of birth and sex agree.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeAlias

from sqlalchemy import (
    BigInteger,
    Integer,
    Select,
    and_,
    bindparam,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement, TextClause
from sqlalchemy.sql.selectable import TextualSelect

from solent.index import schema as t


def _anchored(pat: Any, trusts: list[Any], user_name: Any, at: Any) -> Any:
    s, g = t.study.c, t.break_glass.c
    cond: ColumnElement[bool] = false()
    if trusts:
        cond = or_(
            pat.c.issuer.in_(trusts),
            exists().where(s.patient_pk == pat.c.pk, s.trust_code.in_(trusts)),
            and_(
                pat.c.nhs_number_valid.is_(True),
                pat.c.nhs_number_verified.is_(True),
                _ordered_at(pat, trusts),
            ),
        )
    if user_name is not None:
        cond = or_(
            cond,
            exists().where(g.patient_pk == pat.c.pk, g.user_name == user_name, g.expires_at > at),
        )
    return cond


def _ordered_at(pat: Any, trusts: list[Any]) -> Any:
    """An order at one of ``trusts`` anchors another trust's record with the evidence a
    derived link needs (issue 11): its own record at the ordering trust carries the NHS number
    as traced, date of birth and sex agree, and no "unlinked" decision separates the two
    records (an A37 says they are not one person: an order for one must not open the other).
    A check digit alone would let any order name anyone.

    One EXISTS over joins, not nested ones: the rule sits three levels deep in the trust
    view's queries, and one more nested sub-SELECT overflows SQLite's parser stack."""
    o = t.orders
    ordered = t.patient.alias("ordered")
    separated = t.patient_link.alias("separated")
    sexes = ("M", "F")
    orders_of_traced = o.join(
        ordered,
        and_(
            ordered.c.issuer == o.c.patient_issuer,
            ordered.c.local_id == o.c.patient_id,
            ordered.c.nhs_number == o.c.nhs_number,
            ordered.c.nhs_number_verified.is_(True),
        ),
    ).outerjoin(separated, and_(_pair(separated, ordered, pat), separated.c.status == "unlinked"))
    return exists(
        select(literal(1))
        .select_from(orders_of_traced)
        .where(
            o.c.nhs_number == pat.c.nhs_number,
            o.c.patient_issuer.in_(trusts),
            func.coalesce(o.c.patient_birth_date, "") != "",
            o.c.patient_birth_date == pat.c.birth_date,
            or_(
                not_(func.coalesce(o.c.patient_sex, "").in_(sexes)),
                not_(func.coalesce(pat.c.sex, "").in_(sexes)),
                o.c.patient_sex == pat.c.sex,
            ),
            separated.c.pk.is_(None),
        )
        .correlate(pat)
    )


def _pair(link: Any, a: Any, b: Any) -> Any:
    return or_(
        and_(link.c.patient_a == a.c.pk, link.c.patient_b == b.c.pk),
        and_(link.c.patient_a == b.c.pk, link.c.patient_b == a.c.pk),
    )


def _explicit_link(p: Any, q: Any) -> Any:
    """An explicit "linked" decision between the two records (HL7 A24 or an admin)."""
    link = t.patient_link
    return and_(_pair(link, p, q), link.c.status == "linked")


def derived_link(p: Any, q: Any) -> Any:
    """Same valid, traced NHS number at another trust, agreeing demographics, not unlinked."""
    link = t.patient_link
    # Both records come from enclosing queries: correlate explicitly, or SQLAlchemy adds
    # `seen` to this FROM and the decision no longer ties to the candidate record.
    blocked = exists().where(_pair(link, p, q), link.c.status == "unlinked").correlate(p, q)
    sexes = ("M", "F")
    return and_(
        q.c.nhs_number == p.c.nhs_number,
        q.c.issuer != p.c.issuer,
        p.c.nhs_number_valid.is_(True),
        p.c.nhs_number_verified.is_(True),
        q.c.nhs_number_valid.is_(True),
        q.c.nhs_number_verified.is_(True),
        or_(
            func.coalesce(p.c.birth_date, "") == "",
            func.coalesce(q.c.birth_date, "") == "",
            p.c.birth_date == q.c.birth_date,
        ),
        or_(
            not_(func.coalesce(p.c.sex, "").in_(sexes)),
            not_(func.coalesce(q.c.sex, "").in_(sexes)),
            p.c.sex == q.c.sex,
        ),
        not_(blocked),
    )


def linked_pks(matched: Select[tuple[int]]) -> tuple[Select[tuple[int]], ...]:
    """SELECTs of the pks of every record linked to one of ``matched`` (pks) — an explicit
    "linked" decision (``_explicit_link``) or a derived link (``derived_link``) — for the
    caller to UNION (SQLite allows no nested compound SELECT): the explicit
    links, one SELECT per direction of the pair, and the derived ones. The planner drives them
    from the few matched records through the link table's patient columns and
    patient.nhs_number; a per-row ``linked`` EXISTS under an OR made SQLite scan every study of
    the index instead (~0.3 s at 100k studies)."""
    link = t.patient_link.c
    seed = matched.subquery("seed")
    seeds = select(seed.c.pk)
    forward = select(link.patient_b).where(link.patient_a.in_(seeds), link.status == "linked")
    backward = select(link.patient_a).where(link.patient_b.in_(seeds), link.status == "linked")
    p, q, rule = _linked_pair()
    derived = (
        select(p.c.pk)
        .select_from(p.join(q, q.c.nhs_number == p.c.nhs_number))
        .where(q.c.pk.in_(seeds), rule)
    )
    return forward, backward, derived


@lru_cache(maxsize=1)
def _linked_pair() -> tuple[Any, Any, Any]:
    """The two records of ``linked_pks``' derived links and the rule between them, built once:
    SQLAlchemy elements are immutable, and building the rule was a third of the Python of a
    QIDO-RS search by patient (issue 16)."""
    p = t.patient.alias("linked_p")
    q = t.patient.alias("linked_q")
    return p, q, derived_link(p, q)


#: The access rule as used inside queries: a SELECT of patient pks (see visible_patient_pks).
VisiblePatients: TypeAlias = Select[tuple[int]] | TextualSelect


def visible_patient_pks(
    trusts: Collection[str],
    user_name: str | None,
    at: datetime,
    dialect: str = "sqlite",
    granted: Collection[int] | None = None,
) -> TextualSelect:
    """SELECT of the pks of every patient record the caller may see.

    On PostgreSQL the rule is read from ``patient_visibility``, which migration 0009's
    triggers keep: one primary-key probe per candidate row instead of the rule's sub-plans
    (~5 ms of a 100-study page at 10 M studies, issue 16). Break-glass is per user, so it
    comes as ``granted``, the pks the user's live grants open (``granted_pks``). Elsewhere
    the rule is evaluated in the query (``evaluated_patient_pks``).
    """
    if dialect == "postgresql":
        return _kept_visible(sorted(trusts), sorted(granted or ()))
    return evaluated_patient_pks(trusts, user_name, at, dialect)


def evaluated_patient_pks(
    trusts: Collection[str], user_name: str | None, at: datetime, dialect: str = "sqlite"
) -> TextualSelect:
    """The access rule evaluated per candidate record (SQLite; the reference the kept rows
    of PostgreSQL are checked against).

    The two ways to be related are separate EXISTS so each can use its index (the link
    table's patient columns; patient.nhs_number); one EXISTS with an OR scanned every patient
    for every candidate.

    Built from the Core expression once per shape (dialect, number of trusts, with or without
    a user) and kept as SQL text with bound values: building and cache-keying the expression
    on every request cost more than running it (~3 ms of a QIDO-RS call at 1k studies).
    """
    trust_list = sorted(trusts)
    clause = _visible_sql(dialect, len(trust_list), user_name is not None)
    values: dict[str, Any] = {f"vt{i}": code for i, code in enumerate(trust_list)}
    if user_name is not None:
        values["vu"] = user_name
        values["vnow"] = at
    return clause.bindparams(**values).columns(pk=Integer)


def _kept_visible(trusts: list[str], granted: list[int]) -> TextualSelect:
    values: dict[str, Any] = {f"vt{i}": code for i, code in enumerate(trusts)}
    if granted:
        values["vgranted"] = granted
    return _kept_sql(len(trusts), bool(granted)).bindparams(**values).columns(pk=Integer)


@lru_cache(maxsize=64)
def _kept_sql(n_trusts: int, with_grants: bool) -> TextClause:
    """The kept rows of the caller's trusts, which the planner flattens into a semi-join: a
    page of studies probes the primary key per candidate instead of reading a trust's million
    rows.

    Without grants the rows are the pks themselves: probed with the study's patient_pk, before
    the patient row is read (at 10 M studies ~1 ms less per date-range page than reaching the
    table through ``patient``, where more than half the candidates are probed and dropped).
    """
    names = ", ".join(f":vt{i}" for i in range(n_trusts)) or "NULL"  # parameter names only
    if not with_grants:
        return text(
            f"SELECT kept.patient_pk AS pk FROM patient_visibility AS kept WHERE kept.trust_code IN ({names})"  # noqa: E501, S608
        )
    kept = f"kept.patient_pk = seen.pk AND kept.trust_code IN ({names})"
    sql = f"SELECT seen.pk FROM patient AS seen WHERE EXISTS (SELECT 1 FROM patient_visibility AS kept WHERE {kept})"  # noqa: E501, S608
    return text(sql + " OR seen.pk = ANY(:vgranted)").bindparams(
        bindparam("vgranted", type_=ARRAY(BigInteger))
    )


def granted_pks(conn: Any, user_name: str, at: datetime) -> list[int]:
    """The records a user's live break-glass grants open: each granted record and every record
    linked to it (the rule's anchoring by grant, for ``visible_patient_pks`` on PostgreSQL)."""
    g = t.break_glass.c
    grants = select(g.patient_pk.label("pk")).where(g.user_name == user_name, g.expires_at > at)
    pks = {int(pk) for pk in conn.scalars(grants)}
    if not pks:
        return []
    matched = select(t.patient.c.pk).where(t.patient.c.pk.in_(sorted(pks)))
    for linked in linked_pks(matched):
        pks.update(int(pk) for pk in conn.scalars(linked))
    return sorted(pks)


@lru_cache(maxsize=64)
def _visible_sql(dialect: str, n_trusts: int, with_user: bool) -> TextClause:
    # Placeholder values let the compiler expand IN lists; the real ones are bound per call.
    trusts = [bindparam(f"vt{i}", "", type_=t.patient.c.issuer.type) for i in range(n_trusts)]
    user = bindparam("vu", "", type_=t.break_glass.c.user_name.type) if with_user else None
    at = bindparam("vnow", datetime.now(UTC), type_=t.break_glass.c.expires_at.type)
    p = t.patient.alias("seen")
    q = t.patient.alias("related")
    by_link = exists().where(_explicit_link(p, q), _anchored(q, trusts, user, at)).correlate(p)
    by_nhs_number = exists().where(derived_link(p, q), _anchored(q, trusts, user, at)).correlate(p)
    stmt = select(p.c.pk).where(or_(_anchored(p, trusts, user, at), by_link, by_nhs_number))
    compiled = stmt.compile(
        dialect=_named_dialect(dialect), compile_kwargs={"render_postcompile": True}
    )
    own = {b.key: b for b in (*trusts, user, at) if b is not None}
    # The rule's constants get a prefix so they cannot clash with the enclosing query's.
    sql = re.sub(
        r"(?<!:):(\w+)",
        lambda m: m.group(0) if m.group(1) in own else f":vis_{m.group(1)}",
        str(compiled),
    )
    binds = [
        bindparam(name, type_=own[name].type) if name in own else bindparam(f"vis_{name}", value)
        for name, value in compiled.params.items()
    ]
    return text(sql).bindparams(*binds)


def _named_dialect(name: str) -> Any:
    """The dialect with ``:name`` parameters, the style ``text()`` reads back (the generic
    PostgreSQL compiler: psycopg's adds ``::TYPE`` casts that ``text()`` cannot parse)."""
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql.base import PGDialect

        return PGDialect(paramstyle="named")  # type: ignore[no-untyped-call]
    from sqlalchemy.dialects.sqlite.pysqlite import dialect as lite

    return lite(paramstyle="named")


def visible_counts(conn: Any, visible: VisiblePatients) -> dict[str, int]:
    """Counts over the records a caller may see (stats must not leak the rest)."""
    p, s, se, i = t.patient.c, t.study.c, t.series.c, t.instance.c
    studies = select(s.pk).where(s.patient_pk.in_(visible))
    series = select(se.pk).where(se.study_pk.in_(studies))
    return {
        "patients": int(conn.execute(select(func.count()).where(p.pk.in_(visible))).scalar_one()),
        "studies": int(
            conn.execute(select(func.count()).select_from(studies.subquery())).scalar_one()
        ),
        "series": int(
            conn.execute(select(func.count()).select_from(series.subquery())).scalar_one()
        ),
        "instances": int(
            conn.execute(select(func.count()).where(i.series_pk.in_(series))).scalar_one()
        ),
    }


def studies_among(conn: Any, study_uids: Collection[str], visible: VisiblePatients) -> set[str]:
    """Which of these studies belong to a visible patient."""
    s = t.study.c
    found: set[str] = set()
    uids = sorted(study_uids)
    for i in range(0, len(uids), 500):
        q = select(s.study_uid).where(s.study_uid.in_(uids[i : i + 500]), s.patient_pk.in_(visible))
        found.update(conn.scalars(q))
    return found
