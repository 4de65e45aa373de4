"""Identity as seen from the caller's trust: one person, shown under the viewer's own record.

A person may hold records at several trusts (linked, never merged). A caller of trust T who
looks at a study filed under trust U's record sees the person under T's Patient ID and issuer
when T holds a record linked to U's: viewers match "other studies of this patient" on the
Patient ID they were shown, so the whole history then lines up under one ID. The study's own
identifiers and the NHS number go to Other Patient IDs Sequence, so nothing is hidden. Where T
holds no such record (break-glass, a caller without a trust) the stored identity stays.

This is the one rule every door applies (QIDO-RS, WADO-RS/URI, C-FIND, C-GET/C-MOVE, FHIR): the
services call it; the adapters only pass the caller (or the destination node's trust).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, and_, exists, or_, select

from solent.index import identity as store
from solent.index import schema as t

OTHER_IDS = "OtherPatientIDs"  # row key of query results: [(PatientID, issuer)] as stored


def record_seen_from(
    conn: Connection, patient_pk: int, trust: str | None, linked: Iterable[int]
) -> dict[str, Any] | None:
    """``trust``'s record among ``linked`` (the records linked to ``patient_pk``), or None when
    the record is ``trust``'s own, ``trust`` is None or holds no linked record. Of several
    (a duplicate the trust has not merged yet) the oldest is shown, so the choice is stable."""
    if not trust:
        return None
    row = store.get_patient(conn, patient_pk)
    if row is None:
        return None
    return pick_seen(row, trust, store.get_patients(conn, set(linked) - {patient_pk}))


def pick_seen(
    row: Mapping[str, Any], trust: str, linked: Iterable[Mapping[str, Any]]
) -> dict[str, Any] | None:
    """``record_seen_from`` once the records are read: ``linked`` (the other records of the
    person, oldest first) decide which of ``trust``'s, if any, shows ``row``."""
    if row["issuer"] == trust:
        return None
    real = [dict(r) for r in linked if r["issuer"] == trust and not r["placeholder"]]
    return real[0] if real else None


def records_of(conn: Connection, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """(issuer, local ID) -> record pk, in one query (query results name records so)."""
    by_issuer: dict[str, set[str]] = {}
    for issuer, local_id in keys:
        by_issuer.setdefault(issuer, set()).add(local_id)
    if not by_issuer:
        return {}
    p = t.patient.c
    cond = or_(*(and_(p.issuer == i, p.local_id.in_(sorted(ids))) for i, ids in by_issuer.items()))
    rows = conn.execute(select(p.issuer, p.local_id, p.pk).where(cond))
    return {(r.issuer, r.local_id): int(r.pk) for r in rows}


def maybe_linked(conn: Connection, pks: Iterable[int]) -> set[int]:
    """Those of ``pks`` that can have a linked record at all (an explicit link, or a valid,
    traced NHS number another trust's record shares), in two queries: a page of query results
    walks the links (``IdentityService``) only for these, not for every row."""
    keys = sorted(set(pks))
    if not keys:
        return set()
    link, p = t.patient_link.c, t.patient
    q = t.patient.alias("p_same_nhs")
    explicit = select(link.patient_a, link.patient_b).where(
        link.status == "linked", or_(link.patient_a.in_(keys), link.patient_b.in_(keys))
    )
    shared = select(p.c.pk).where(
        p.c.pk.in_(keys),
        p.c.nhs_number_valid.is_(True),
        p.c.nhs_number_verified.is_(True),
        exists().where(
            q.c.nhs_number == p.c.nhs_number,
            q.c.issuer != p.c.issuer,
            q.c.nhs_number_valid.is_(True),
            q.c.nhs_number_verified.is_(True),
        ),
    )
    found = {int(r[0]) for r in conn.execute(shared)}
    for a, b in conn.execute(explicit):
        found |= {int(a), int(b)}
    return found & set(keys)


def own_id_item(row: Mapping[str, Any]) -> dict[str, Any]:
    """The study's own record as an Other Patient IDs Sequence item."""
    return {
        "PatientID": row["local_id"],
        "IssuerOfPatientID": row["issuer"],
        "TypeOfPatientID": "TEXT",
    }


def seen_attributes(
    stored: Mapping[str, Any], own: Mapping[str, Any], seen: Mapping[str, Any]
) -> dict[str, Any]:
    """Outgoing patient attributes (``current_patient_attributes`` form) of the study's record
    ``own`` as the viewer's linked record ``seen`` shows the person: the viewer's ID, issuer and
    demographics (the study's where the viewer's PAS sent none), the study's own identifiers
    and the NHS number in Other Patient IDs Sequence."""
    attrs = dict(stored)
    attrs["PatientID"] = seen["local_id"]
    attrs["IssuerOfPatientID"] = seen["issuer"]
    for keyword, column in (
        ("PatientName", "name"),
        ("PatientBirthDate", "birth_date"),
        ("PatientSex", "sex"),
    ):
        attrs[keyword] = seen[column] or stored.get(keyword) or ""
    nhs_items = list(stored.get("OtherPatientIDsSequence") or [])
    attrs["OtherPatientIDsSequence"] = [own_id_item(own), *nhs_items]
    return attrs


def seen_row(row: dict[str, Any], seen: Mapping[str, Any]) -> dict[str, Any]:
    """A query result row (``solent.index.query`` keys) as the viewer's record shows it."""
    out = dict(row)
    out[OTHER_IDS] = [(row["PatientID"], row["IssuerOfPatientID"])]
    out["PatientID"] = seen["local_id"]
    out["IssuerOfPatientID"] = seen["issuer"]
    for keyword, column in (
        ("PatientName", "name"),
        ("PatientBirthDate", "birth_date"),
        ("PatientSex", "sex"),
    ):
        if keyword in out:
            out[keyword] = seen[column] or row[keyword]
    return out
