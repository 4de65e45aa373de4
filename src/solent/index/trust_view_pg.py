"""The trust view of a page of query results in one PostgreSQL statement (issue 16).

``IdentityLinks`` walks a person's records in Python, one round of queries per step (five or
more statements for a 100-row QIDO-RS page, each built with SQLAlchemy). On PostgreSQL the same
walk runs as a recursive CTE: from each (issuer, local ID) of the page, the records reachable by
an explicit "linked" decision or by a derived link (same valid, traced NHS number at another
trust, date of birth and sex not in conflict, no "unlinked" decision: ``_neighbours_of`` and
``_conflict`` of services/identity), then, per starting record, the oldest real record of the
caller's trust among them (``trust_view.pick_seen``). A test compares the two on random
identity graphs (tests/interop/test_trust_view_pg.py).

The text is fixed (arrays as parameters), so psycopg prepares it once per connection.

The statement tracks every starting record separately, so its work grows with the number of
starting records times the size of the group they belong to: fine for people with a few
records, ruinous where hundreds of records share one traced NHS number (a test or default
number a feed marked verified: 400 such records took 19 s against the walk's 0.35 s). So the
statement counts those records first and, above ``CROWD``, answers only "crowded" (None): such
pages go back to the walk. One round trip either way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, text

_SQL = text(
    """
WITH RECURSIVE crowd AS (
    SELECT coalesce(sum(
        (SELECT count(*) FROM (SELECT 1 FROM patient q WHERE q.nhs_number = p.nhs_number
                               LIMIT :cap) AS same)
    ), 0) AS n
    FROM unnest(CAST(:issuers AS text[]), CAST(:ids AS text[])) AS k(issuer, local_id)
    JOIN patient p ON p.issuer = k.issuer AND p.local_id = k.local_id
    WHERE p.issuer <> :trust AND coalesce(p.nhs_number, '') <> ''
      AND p.nhs_number_valid AND p.nhs_number_verified
), start AS (
    SELECT p.pk, p.issuer, p.local_id
    FROM unnest(CAST(:issuers AS text[]), CAST(:ids AS text[])) AS k(issuer, local_id)
    JOIN patient p ON p.issuer = k.issuer AND p.local_id = k.local_id
    WHERE p.issuer <> :trust AND (SELECT n FROM crowd) < :cap
), reach(origin, pk) AS (
    SELECT pk, pk FROM start
    UNION
    SELECT r.origin, n.pk
    FROM reach r
    CROSS JOIN LATERAL (
        SELECT o.pk FROM patient_link l JOIN patient o ON o.pk = l.patient_b
        WHERE l.patient_a = r.pk AND l.status = 'linked'
        UNION ALL
        SELECT o.pk FROM patient_link l JOIN patient o ON o.pk = l.patient_a
        WHERE l.patient_b = r.pk AND l.status = 'linked'
        UNION ALL
        SELECT q.pk FROM patient p JOIN patient q ON q.nhs_number = p.nhs_number
        WHERE p.pk = r.pk
          AND coalesce(p.nhs_number, '') <> ''
          AND p.nhs_number_valid AND p.nhs_number_verified
          AND q.nhs_number_valid AND q.nhs_number_verified
          AND q.issuer <> p.issuer
          AND (coalesce(p.birth_date, '') = '' OR coalesce(q.birth_date, '') = ''
               OR p.birth_date = q.birth_date)
          AND (coalesce(p.sex, '') NOT IN ('M', 'F') OR coalesce(q.sex, '') NOT IN ('M', 'F')
               OR p.sex = q.sex)
          AND NOT EXISTS (
              SELECT 1 FROM patient_link u
              WHERE u.status = 'unlinked'
                AND ((u.patient_a = p.pk AND u.patient_b = q.pk)
                     OR (u.patient_a = q.pk AND u.patient_b = p.pk)))
    ) n
), seen AS (
    SELECT r.origin, min(r.pk) AS pk
    FROM reach r JOIN patient s ON s.pk = r.pk
    WHERE r.pk <> r.origin AND s.issuer = :trust AND NOT s.placeholder
    GROUP BY r.origin
)
SELECT false AS crowded, st.issuer AS origin_issuer, st.local_id AS origin_local_id,
       v.pk, v.issuer, v.local_id, v.name, v.birth_date, v.sex, v.nhs_number,
       v.nhs_number_valid, v.nhs_number_verified, v.placeholder, v.created_at, v.updated_at
FROM seen JOIN start st ON st.pk = seen.origin JOIN patient v ON v.pk = seen.pk
UNION ALL
SELECT true, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
WHERE (SELECT n FROM crowd) >= :cap
"""
)


#: Records sharing the starting records' traced NHS numbers, in all, above which the page is
#: left to the Python walk (a page of 100 people with a few records each is well below it).
CROWD = 1000


def _params(keys: Iterable[tuple[str, str]], trust: str) -> dict[str, Any] | None:
    """The statement's parameters: the page's (issuer, local ID) pairs as two arrays."""
    pairs = sorted(set(keys))
    if not pairs:
        return None
    return {"issuers": [i for i, _ in pairs], "ids": [p for _, p in pairs], "trust": trust}


def records_seen_from(
    conn: Connection, keys: Iterable[tuple[str, str]], trust: str
) -> dict[tuple[str, str], dict[str, Any]] | None:
    """(issuer, local ID) of other trusts' records -> the record of ``trust`` that shows the
    person (``trust_view.pick_seen``), for those that have one; None when the page is
    ``crowded`` (the statement counts first, in the same round trip, and stops)."""
    params = _params(keys, trust)
    if params is None:
        return {}
    rows = conn.execute(_SQL, {**params, "cap": CROWD + 1}).mappings()
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        record = dict(row)
        if record.pop("crowded"):
            return None
        key = (record.pop("origin_issuer"), record.pop("origin_local_id"))
        out[key] = record
    return out
