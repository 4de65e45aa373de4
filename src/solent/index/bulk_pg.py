"""A synthetic regional archive of millions of studies, generated inside PostgreSQL.

`bulk.fill_synthetic` builds rows in Python and COPYs them (~1 M studies in minutes); at 10 M
the Python side dominates. Here every row comes from one ``INSERT ... SELECT generate_series``
per table, into tables stripped of their secondary indexes and foreign keys, which are rebuilt
once afterwards (one sort per index instead of 10 M B-tree insertions), then ANALYZE.

The shape follows the consortium (issue 16): six trusts of unequal size; people with several
studies (a Poisson-like spread, mean ``studies_per_patient``); one person in five also has a
record at a second trust with the same traced NHS number (a derived link), some explicit
"linked" and "unlinked" decisions; modalities in a radiology department's proportions, some
studies with two; dates over the last eight years. Like `bulk`, no blob is written: these
instances cannot be retrieved, only found.
"""

# ruff: noqa: S608 -- the SQL is built from this module's constants; values are bound parameters

from __future__ import annotations

import random
from dataclasses import dataclass, field

from sqlalchemy import Connection, text

from solent.index.bulk import SOP_CLASS, SyntheticSummary, visibility_triggers_off
from solent.index.sql import Index

#: Trust codes and their share of the region's records (a big teaching hospital, smaller DGHs).
TRUST_SHARES = (("ZZA", 30), ("ZZB", 20), ("ZZC", 15), ("ZZD", 15), ("ZZE", 12), ("ZZF", 8))
#: ModalitiesInStudy values and their share of studies (a plain-film-heavy department).
MODALITY_SHARES = (
    ("CR", 22),
    ("DX", 14),
    ("US", 18),
    ("CT", 14),
    ("CT\\SR", 3),
    ("MR", 11),
    ("MG", 7),
    ("XA", 3),
    ("NM", 2),
    ("PT\\CT", 2),
    ("RF", 4),
)
FIRST_DAY = "2018-12-01"  # eight years of studies up to the end of 2026
DAYS = 8 * 365
TABLES = ("patient", "study", "series", "instance", "patient_link")


@dataclass
class _Saved:
    """Secondary indexes, unique and foreign keys of the filled tables, dropped during the fill."""

    indexes: list[str] = field(default_factory=list)
    constraints: list[tuple[str, str, str]] = field(default_factory=list)  # unique, then foreign


def _weighted_case(column: str, shares: tuple[tuple[str, int], ...]) -> str:
    """A CASE mapping ``column`` (an integer 0..99) to a value by cumulative share."""
    total = sum(s for _, s in shares)
    arms, upto = [], 0
    for value, share in shares:
        upto += share
        arms.append(f"WHEN {column} < {upto * 100 // total} THEN '{value}'")
    return "CASE " + " ".join(arms[:-1]) + f" ELSE '{shares[-1][0]}' END"


def _strip(conn: Connection) -> _Saved:
    saved = _Saved()
    names = ", ".join(f"'{n}'" for n in TABLES)
    for kind in ("f", "u"):  # foreign keys first: they may lean on a unique key
        for name, table, definition in conn.execute(
            text(
                "SELECT conname, conrelid::regclass::text, pg_get_constraintdef(oid) "
                f"FROM pg_constraint WHERE contype = '{kind}' "
                f"AND conrelid::regclass::text IN ({names})"
            )
        ).all():
            saved.constraints.insert(0, (name, table, definition))
            conn.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'))
    for name, definition in conn.execute(
        text(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = current_schema()"
            f" AND i.tablename IN ({names}) AND NOT EXISTS (SELECT 1 FROM pg_constraint c"
            " WHERE c.conname = i.indexname)"
        )
    ).all():
        saved.indexes.append(definition)
        conn.execute(text(f'DROP INDEX "{name}"'))
    return saved


def _restore(conn: Connection, saved: _Saved) -> None:
    conn.execute(text("SET maintenance_work_mem = '512MB'"))
    for definition in saved.indexes:
        conn.execute(text(definition))
    for name, table, definition in saved.constraints:
        conn.execute(text(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}'))


def _has_rows(conn: Connection) -> bool:
    return conn.execute(text("SELECT EXISTS (SELECT 1 FROM study)")).scalar_one() is True


def fill_region(
    index: Index, n_studies: int, *, studies_per_patient: float = 3.0, seed: int = 1
) -> SyntheticSummary:
    """Fill an empty PostgreSQL index with ``n_studies`` studies (one instance per series)."""
    if index.dialect != "postgresql":
        raise ValueError("fill_region generates rows inside PostgreSQL")
    n_patients = max(1, int(n_studies / studies_per_patient))
    trusts = " ".join(f"('{c}', 'Synthetic trust {c}', now())," for c, _ in TRUST_SHARES)
    issuer = _weighted_case("(hashint8(r * 31 + :seed) & 1023) % 100", TRUST_SHARES)
    modalities = _weighted_case("(hashint8(s * 17 + :seed) & 1023) % 100", MODALITY_SHARES)
    sop_class = "CASE " + " ".join(
        f"WHEN se.modality = '{k}' THEN '{v}'" for k, v in SOP_CLASS.items()
    )
    params = {"seed": seed, "patients": n_patients, "studies": n_studies}
    statements = [
        f"INSERT INTO trust (code, name, created_at) VALUES {trusts.rstrip(',')} "
        "ON CONFLICT DO NOTHING",
        # Records: record r is person r, except every fifth, which is person r-1's record at
        # another trust (adjacent records draw their issuers independently; same-trust pairs
        # are harmless duplicates of a person, as real archives have).
        f"""
        INSERT INTO patient (pk, issuer, local_id, name, name_upper, birth_date, sex,
                             nhs_number, nhs_number_valid, nhs_number_verified, placeholder,
                             created_at, updated_at)
        SELECT r, issuer, issuer || lpad(r::text, 9, '0'), nm, nm,
               to_char(date '1930-01-01' + (abs(hashint8(person * 13)) % 32000)::int, 'YYYYMMDD'),
               CASE WHEN hashint8(person * 7) & 1 = 0 THEN 'M' ELSE 'F' END,
               CASE WHEN check_digit < 10 THEN base9::text || check_digit::text END,
               check_digit < 10, check_digit < 10 AND r % 10 <> 3, false, now(), now()
        FROM (
          SELECT r, person, {issuer} AS issuer,
                 (ARRAY['SMITH','JONES','TAYLOR','BROWN','WILLIAMS','WILSON','JOHNSON','DAVIES',
                        'PATEL','EVANS'])[1 + abs(hashint8(person * 3)) % 10] || '^' ||
                 (ARRAY['JAMES','MARY','OLIVER','AMELIA','GEORGE','ISLA','HARRY','AVA','NOAH',
                        'MIA'])[1 + abs(hashint8(person * 5)) % 10] AS nm,
                 base9,
                 (11 - (
                   (base9 / 100000000 % 10) * 10 + (base9 / 10000000 % 10) * 9
                   + (base9 / 1000000 % 10) * 8 + (base9 / 100000 % 10) * 7
                   + (base9 / 10000 % 10) * 6 + (base9 / 1000 % 10) * 5
                   + (base9 / 100 % 10) * 4 + (base9 / 10 % 10) * 3 + (base9 % 10) * 2
                 ) % 11) % 11 AS check_digit
          FROM (
            SELECT r, CASE WHEN r % 5 = 0 THEN r - 1 ELSE r END AS person,
                   900000000 + CASE WHEN r % 5 = 0 THEN r - 1 ELSE r END AS base9
            FROM generate_series(1, :patients) AS r
          ) people
        ) records
        """,
        # Studies: each picks a record at random (a Poisson spread of studies per person); the
        # study is made at the record's own trust, one in fifty at another (regional services).
        f"""
        INSERT INTO study (pk, study_uid, patient_pk, trust_code, study_date, study_time,
                           accession_number, accession_issuer, study_id, study_description,
                           referring_physician, modalities, num_series, num_instances,
                           size_bytes, created_at, updated_at)
        SELECT s, '2.25.7' || :seed || '.' || s, p.pk,
               CASE WHEN s % 50 = 7 THEN 'ZZA' ELSE p.issuer END, d, t, 'A' || s, p.issuer,
               (s % 10000)::text, split_part(m, '\\', 1) || ' synthetic study',
               'REFERRER^' || (s % 500), m, array_length(string_to_array(m, '\\'), 1),
               array_length(string_to_array(m, '\\'), 1), 0, now(), now()
        FROM (
          SELECT s, 1 + abs(hashint8(s * 11 + :seed)) % :patients AS patient_pk,
                 {modalities} AS m,
                 to_char(date '{FIRST_DAY}' + (abs(hashint8(s * 23 + :seed)) % {DAYS})::int,
                         'YYYYMMDD') AS d,
                 lpad((abs(hashint8(s * 29)) % 24)::text, 2, '0') || '3000' AS t
          FROM generate_series(1, :studies) AS s
        ) g JOIN patient p ON p.pk = g.patient_pk
        """,
        """
        INSERT INTO series (pk, series_uid, study_pk, modality, series_number,
                            series_description, body_part, series_date, num_instances, created_at)
        SELECT s.pk * 2 + n - 1, s.study_uid || '.' || n, s.pk, m, n, m || ' series ' || n,
               (ARRAY['CHEST','HEAD','ABDOMEN','KNEE'])[1 + s.pk % 4], s.study_date, 1, now()
        FROM study s, unnest(string_to_array(s.modalities, '\\')) WITH ORDINALITY AS u(m, n)
        """,
        f"""
        INSERT INTO instance (pk, sop_instance_uid, series_pk, sop_class_uid, instance_number,
                              rows, columns, number_of_frames, transfer_syntax_uid, size_bytes,
                              sha256, blob_key, trust_code, received_via, received_by,
                              received_at)
        SELECT se.pk, se.series_uid || '.1', se.pk,
               {sop_class} ELSE '{SOP_CLASS["CT"]}' END, 1, 512, 512, 1,
               '1.2.840.10008.1.2.1', 0, repeat('0', 64), 'synthetic/none', st.trust_code,
               'import', 'system:synthetic', now()
        FROM series se JOIN study st ON st.pk = se.study_pk
        """,
        # Explicit decisions: one record in 200 linked by an A24 to the next record, and one
        # derived link in a thousand blocked by an "unlinked" (A37).
        """
        INSERT INTO patient_link (patient_a, patient_b, status, source, updated_by, updated_at)
        SELECT r, r + 1, CASE WHEN r % 1000 = 4 THEN 'unlinked' ELSE 'linked' END,
               'hl7:A24', 'system:synthetic', now()
        FROM generate_series(1, :patients - 1) AS r
        WHERE r % 200 = 1 OR r % 1000 = 4
        """,
    ]

    def fill(conn: Connection) -> None:
        if _has_rows(conn):
            raise ValueError("fill_region fills an empty index only")
        saved = _strip(conn)
        with visibility_triggers_off(conn):  # one rebuild afterwards, in one statement
            for sql in statements:
                conn.execute(text(sql), {k: v for k, v in params.items() if f":{k}" in sql})
            _restore(conn, saved)
            # Statistics of the uncommitted rows first: without them the planner takes the
            # tables for empty and the rebuild's joins run as nested loops (hours at 10 M).
            conn.execute(text("ANALYZE patient, study, orders, patient_link"))
            conn.execute(text("SELECT solent_visibility_rebuild()"))
        for name in ("patient", "study", "series", "instance", "patient_link"):
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'pk'), "
                    f"(SELECT COALESCE(MAX(pk), 1) FROM {name}))"
                )
            )

    index.write(fill)
    with index.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
    return summarise(index, seed)


def summarise(index: Index, seed: int) -> SyntheticSummary:
    summary = SyntheticSummary()
    with index.read() as conn:
        counts = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM patient), (SELECT count(*) FROM study), "
                "(SELECT count(*) FROM series), (SELECT count(*) FROM instance)"
            )
        ).one()
        summary.patients, summary.studies, summary.series, summary.instances = counts
        top = int(counts[0])
        rng = random.Random(seed)
        picks = sorted({rng.randrange(1, top + 1) for _ in range(1000)})
        for issuer, local_id, nhs in conn.execute(
            text("SELECT issuer, local_id, nhs_number FROM patient WHERE pk = ANY(:pks)"),
            {"pks": picks},
        ):
            summary.sample_patients.append((issuer, local_id))
            if nhs:
                summary.sample_nhs_numbers.append(nhs)
    return summary
