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

from sqlalchemy import Connection

from solent.index import identity as store

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


def linkable_records(
    conn: Connection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """(issuer, local ID) -> record of those records (query results name records so) that
    can have a linked record at all; only these need the link walk (``IdentityLinks``)."""
    return store.linkable_patients(conn, keys)


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
