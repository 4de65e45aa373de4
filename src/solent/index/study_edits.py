"""SQL of study edits (R57): a study moved to another patient record, an accession corrected.

A move is the study row's ``patient_pk`` changed, as an A40 merge does for all of a record's
studies: series, instances and metadata follow the study row, so every door (QIDO, C-FIND,
WADO, C-GET/C-MOVE, FHIR, the viewer) files the study under its new record at once, and the
outgoing header patch (services/outgoing_identity.py) puts the stored identity in Original
Attributes Sequence. Each edit is a ``study_edit`` row; the service decides who may.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, exists, insert, select, update

from solent.index import schema as t
from solent.index.sql import now

MOVE = "move"
ACCESSION = "accession"
REQUESTED, DONE, REFUSED = "requested", "done", "refused"


def add_edit(conn: Connection, **values: Any) -> int:
    res = conn.execute(insert(t.study_edit).values(requested_at=now(), **values))
    return int(res.inserted_primary_key[0])  # type: ignore[index]


def get_edit(conn: Connection, pk: int) -> dict[str, Any] | None:
    row = conn.execute(select(t.study_edit).where(t.study_edit.c.pk == pk)).mappings().first()
    return dict(row) if row else None


def edits(
    conn: Connection, *, study_uid: str | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    c = t.study_edit.c
    q = select(t.study_edit).order_by(c.pk)
    if study_uid is not None:
        q = q.where(c.study_uid == study_uid)
    if status is not None:
        q = q.where(c.status == status)
    return [dict(r) for r in conn.execute(q).mappings()]


def pending_for(conn: Connection, study_uid: str) -> dict[str, Any] | None:
    c = t.study_edit.c
    row = (
        conn.execute(
            select(t.study_edit).where(c.study_uid == study_uid, c.status == REQUESTED).limit(1)
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


def decide(conn: Connection, pk: int, status: str, by: str) -> bool:
    """Settle a requested edit; False when it was decided meanwhile (nothing changed)."""
    c = t.study_edit.c
    res = conn.execute(
        update(t.study_edit)
        .where(c.pk == pk, c.status == REQUESTED)
        .values(status=status, decided_by=by, decided_at=now())
    )
    return bool(res.rowcount)


def mark_reversed(conn: Connection, pk: int, by_pk: int) -> None:
    c = t.study_edit.c
    conn.execute(update(t.study_edit).where(c.pk == pk).values(reversed_by=by_pk))


def refile_study(conn: Connection, study_pk: int, from_pk: int, to_pk: int) -> bool:
    """File the study under ``to_pk``; False when it is no longer under ``from_pk``. The UPDATE
    locks the study row: an ingest into the study waits for it (its instance rows hang off the
    study row, so they are under the new record whichever commits first)."""
    c = t.study.c
    res = conn.execute(
        update(t.study)
        .where(c.pk == study_pk, c.patient_pk == from_pk)
        .values(patient_pk=to_pk, updated_at=now())
    )
    return bool(res.rowcount)


def set_accession(
    conn: Connection,
    study_pk: int,
    old: tuple[str | None, str | None],
    new: tuple[str, str | None],
) -> bool:
    """Set (accession, issuer); False when the study's accession changed meanwhile."""
    c = t.study.c
    res = conn.execute(
        update(t.study)
        .where(
            c.pk == study_pk,
            _same(c.accession_number, old[0]),
            _same(c.accession_issuer, old[1]),
        )
        .values(accession_number=new[0], accession_issuer=new[1], updated_at=now())
    )
    return bool(res.rowcount)


def _same(column: Any, value: str | None) -> Any:
    return column.is_(None) if value is None else column == value


def moved_away_from(conn: Connection, study_uid: str, issuer: str, local_id: str) -> bool:
    """A person moved this study away from the record (issuer, local_id): instances that still
    name that record (the modality's worklist entry was wrong too) follow the study."""
    c = t.study_edit.c
    return bool(
        conn.execute(
            select(
                exists().where(
                    c.study_uid == study_uid,
                    c.kind == MOVE,
                    c.status == DONE,
                    c.from_issuer == issuer,
                    c.from_local_id == local_id,
                )
            )
        ).scalar()
    )


def corrected_accession(conn: Connection, study_uid: str) -> str | None:
    """The study's accession number when a person corrected it (what outgoing headers must
    say instead of the stored one), else None: uncorrected studies go out as stored."""
    c, s = t.study_edit.c, t.study.c
    row = conn.execute(
        select(s.accession_number).where(
            s.study_uid == study_uid,
            exists().where(c.study_uid == study_uid, c.kind == ACCESSION, c.status == DONE),
        )
    ).first()
    return None if row is None else str(row[0] or "")


def order_patient(conn: Connection, accession: str, issuer: str) -> tuple[str, str] | None:
    """(patient issuer, patient ID) of the order (accession, issuer), if one is known."""
    o = t.orders.c
    row = conn.execute(
        select(o.patient_issuer, o.patient_id).where(
            o.accession_number == accession, o.accession_issuer == issuer
        )
    ).first()
    return None if row is None else (str(row[0]), str(row[1]))


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
