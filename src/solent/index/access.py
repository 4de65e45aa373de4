"""SQL of the legitimate-relationship rule: which patient records a set of trusts may see.

A record is *anchored* at a trust when it was issued by the trust or has a study there, or the
user holds a live break-glass grant for it. A record *linked* to an anchored record is visible
too, which is what makes cross-trust viewing for direct care work. Links follow the regional
identity rule (services/identity.py): an explicit ``patient_link`` "linked" decision, or the same
valid, traced NHS number at another trust with agreeing date of birth and sex, unless an explicit
"unlinked" decision blocks it. (Links are followed one step, not transitively.) The patient of
an order placed at the trust counts as anchored through its NHS number, before any image exists.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, exists, false, func, not_, or_, select
from sqlalchemy.sql.elements import ColumnElement

from solent.index import schema as t


def _anchored(pat: Any, trusts: list[str], user_name: str | None, at: datetime) -> Any:
    s, g, o = t.study.c, t.break_glass.c, t.orders.c
    cond: ColumnElement[bool] = false()
    if trusts:
        cond = or_(
            pat.c.issuer.in_(trusts),
            exists().where(s.patient_pk == pat.c.pk, s.trust_code.in_(trusts)),
            and_(
                pat.c.nhs_number_valid.is_(True),
                exists().where(o.nhs_number == pat.c.nhs_number, o.patient_issuer.in_(trusts)),
            ),
        )
    if user_name:
        cond = or_(
            cond,
            exists().where(g.patient_pk == pat.c.pk, g.user_name == user_name, g.expires_at > at),
        )
    return cond


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


def linked(p: Any, q: Any) -> Any:
    """Records ``p`` and ``q`` belong to one person: an explicit link or a derived one.

    The one statement of the regional link rule; the query engine's ``linked`` option uses it.
    """
    explicit = exists().where(_explicit_link(p, q)).correlate(p, q)
    return or_(explicit, derived_link(p, q))


def visible_patient_pks(
    trusts: Collection[str], user_name: str | None, at: datetime
) -> Select[tuple[int]]:
    """SELECT of the pks of every patient record the caller may see.

    The two ways to be related are separate EXISTS so each can use its index (the link
    table's patient columns; patient.nhs_number); one EXISTS with an OR scanned every patient
    for every candidate.
    """
    trust_list = sorted(trusts)
    p = t.patient.alias("seen")
    q = t.patient.alias("related")
    by_link = (
        exists().where(_explicit_link(p, q), _anchored(q, trust_list, user_name, at)).correlate(p)
    )
    by_nhs_number = (
        exists().where(derived_link(p, q), _anchored(q, trust_list, user_name, at)).correlate(p)
    )
    return (
        select(p.c.pk)
        .where(or_(_anchored(p, trust_list, user_name, at), by_link, by_nhs_number))
        .correlate(None)  # stands alone inside any query that also reads `patient`
    )


def visible_counts(conn: Any, visible: Select[tuple[int]]) -> dict[str, int]:
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


def studies_among(conn: Any, study_uids: Collection[str], visible: Select[tuple[int]]) -> set[str]:
    """Which of these studies belong to a visible patient."""
    s = t.study.c
    found: set[str] = set()
    uids = sorted(study_uids)
    for i in range(0, len(uids), 500):
        q = select(s.study_uid).where(s.study_uid.in_(uids[i : i + 500]), s.patient_pk.in_(visible))
        found.update(conn.scalars(q))
    return found
