"""SQL of the demographic search (IHE PDQ ITI-21, PDQm ITI-78): patient records by name,
date of birth, sex and identifier, within the records the caller may see.

Names are stored as DICOM PN (``FAMILY^GIVEN^MIDDLE``) with an upper-cased copy that is
indexed; a family name is matched at the start of that copy, so the index serves it. Given
names are narrowed in the service (a component anywhere after the first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from solent.domain.matching import LIKE_ESCAPE, like_pattern
from solent.index import schema as t

PatientRow = dict[str, Any]


@dataclass(frozen=True, slots=True)
class DemographicFilter:
    """What the SQL narrows on; all given conditions must hold. Names upper-cased."""

    family: str | None = None
    family_exact: bool = False
    given: str | None = None  # narrowed further by the caller (component match)
    birth_date: str | None = None  # YYYYMMDD
    sex: str | None = None  # M, F, O; U: none recorded
    issuer: str | None = None
    local_id: str | None = None
    nhs_number: str | None = None


def search_patients(
    conn: Connection, wanted: DemographicFilter, visible: Any, limit: int
) -> list[PatientRow]:
    """Records matching ``wanted`` among ``visible`` (a SELECT of patient pks, None: all),
    oldest first, at most ``limit``."""
    p = t.patient.c
    q = select(p.pk, p.issuer, p.local_id, p.name, p.birth_date, p.sex, p.nhs_number).add_columns(
        p.nhs_number_valid, p.nhs_number_verified
    )
    if wanted.family is not None:
        family = _literal(wanted.family)
        if wanted.family_exact:
            q = q.where(
                (p.name_upper == wanted.family.upper())
                | p.name_upper.like(f"{family}^%", escape=LIKE_ESCAPE)
            )
        else:
            q = q.where(p.name_upper.like(f"{family}%", escape=LIKE_ESCAPE))
    if wanted.given is not None:
        given = _literal(wanted.given)
        q = q.where(p.name_upper.like(f"%^{given}%", escape=LIKE_ESCAPE))
    if wanted.birth_date is not None:
        q = q.where(p.birth_date == wanted.birth_date)
    if wanted.sex == "U":  # unknown: nothing recorded
        q = q.where((p.sex.is_(None)) | (p.sex == ""))
    elif wanted.sex is not None:
        q = q.where(p.sex == wanted.sex)
    if wanted.issuer is not None:
        q = q.where(p.issuer == wanted.issuer)
    if wanted.local_id is not None:
        q = q.where(p.local_id == wanted.local_id)
    if wanted.nhs_number is not None:
        # R3: only a number traced on PDS names the person (an untraced one may be a typo)
        q = q.where(
            p.nhs_number == wanted.nhs_number,
            p.nhs_number_valid.is_(True),
            p.nhs_number_verified.is_(True),
        )
    if visible is not None:
        q = q.where(p.pk.in_(visible))
    return [dict(r) for r in conn.execute(q.order_by(p.pk).limit(limit)).mappings()]


def _literal(text: str) -> str:
    """A name as a LIKE pattern matching itself (names carry no wildcards: ``*`` and ``?``
    are dropped, ``%`` and ``_`` escaped)."""
    return like_pattern(text.upper().replace("*", "").replace("?", ""))
