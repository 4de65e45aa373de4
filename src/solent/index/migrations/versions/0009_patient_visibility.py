"""patient_visibility: the access rule kept as rows, maintained by triggers (PostgreSQL)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

Issue 16: evaluated per candidate row, the legitimate-relationship rule (index/access.py) was
~5 ms of PostgreSQL per 100-study page at 10 M studies, half of it planning its sub-plans.
Here each patient record carries the trusts that may see it (without break-glass, which stays
per user), so a query probes one primary key per candidate row.

Triggers on every input of the rule (patient, study, orders, patient_link) recompute the rows of
the records the change can affect, in the changing transaction, whatever code made the change
(an older node during a rolling upgrade included). A change reaches at most two steps (an order
anchors the records of its NHS number, which makes visible the records linked to them), so the
records recomputed are two steps of "same NHS number or an explicit decision" around the
changed rows, old and new values both. Recomputations take one transaction-scoped advisory
lock, so two can never interleave: the later one reads what the earlier committed (READ
COMMITTED takes a new snapshot per statement) and no row is left stale by a race. A new study
at a trust where its patient is anchored already changes nothing and takes the lock in shared
mode only, so concurrent ingest does not queue behind itself.

SQLite keeps evaluating the rule in the query (one writer, smaller archives); the table stays
empty there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

#: pg_advisory_xact_lock key of visibility recomputation ("SOLVIS" in ASCII).
LOCK_KEY = 0x534F4C564953

# The rule of index/access.py, inverted: for each record p of {hood}, the trusts anchoring p or
# a record linked to p (an explicit "linked" decision, or the same valid, traced NHS number at
# another trust with agreeing date of birth and sex and no "unlinked" decision). A record is
# anchored at its issuing trust, at the trusts of its studies, and at the trust of an order for
# its NHS number whose own record traced that number, with agreeing date of birth and sex.
# tests/interop/test_visibility_pg.py checks it against the rule on random identity graphs.
RULE_ROWS = """
SELECT DISTINCT rel.p, anchor.trust
FROM (
  SELECT p.pk AS p, p.pk AS q FROM patient p WHERE {p_in_hood}
  UNION
  SELECT l.patient_a, l.patient_b FROM patient_link l
   WHERE l.status = 'linked' AND {a_in_hood}
  UNION
  SELECT l.patient_b, l.patient_a FROM patient_link l
   WHERE l.status = 'linked' AND {b_in_hood}
  UNION
  SELECT p.pk, q.pk FROM patient p JOIN patient q ON q.nhs_number = p.nhs_number
   WHERE {p_in_hood}
     AND q.issuer <> p.issuer
     AND p.nhs_number_valid IS TRUE AND p.nhs_number_verified IS TRUE
     AND q.nhs_number_valid IS TRUE AND q.nhs_number_verified IS TRUE
     AND (coalesce(p.birth_date, '') = '' OR coalesce(q.birth_date, '') = ''
          OR p.birth_date = q.birth_date)
     AND (coalesce(p.sex, '') NOT IN ('M', 'F') OR coalesce(q.sex, '') NOT IN ('M', 'F')
          OR p.sex = q.sex)
     AND NOT EXISTS (
       SELECT 1 FROM patient_link u WHERE u.status = 'unlinked'
        AND ((u.patient_a = p.pk AND u.patient_b = q.pk)
             OR (u.patient_a = q.pk AND u.patient_b = p.pk)))
) rel
JOIN LATERAL (
  SELECT q.issuer AS trust FROM patient q WHERE q.pk = rel.q
  UNION
  SELECT s.trust_code FROM study s WHERE s.patient_pk = rel.q
  UNION
  SELECT o.patient_issuer FROM patient q JOIN orders o ON o.nhs_number = q.nhs_number
   WHERE q.pk = rel.q
     AND q.nhs_number_valid IS TRUE AND q.nhs_number_verified IS TRUE
     AND coalesce(o.patient_birth_date, '') <> '' AND o.patient_birth_date = q.birth_date
     AND (coalesce(o.patient_sex, '') NOT IN ('M', 'F') OR coalesce(q.sex, '') NOT IN ('M', 'F')
          OR o.patient_sex = q.sex)
     AND EXISTS (
       SELECT 1 FROM patient r
        WHERE r.issuer = o.patient_issuer AND r.local_id = o.patient_id
          AND r.nhs_number = o.nhs_number AND r.nhs_number_verified IS TRUE)
) anchor ON TRUE
"""

IN_HOOD = {"p_in_hood": "p.pk = ANY(hood)", "a_in_hood": "l.patient_a = ANY(hood)",
           "b_in_hood": "l.patient_b = ANY(hood)"}  # fmt: skip
EVERYWHERE = {"p_in_hood": "TRUE", "a_in_hood": "TRUE", "b_in_hood": "TRUE"}

# One step around records and NHS numbers: the records themselves, the records of their NHS
# numbers (and of the numbers given), and the records of any explicit decision with them.
HOP_FUNCTION = """
CREATE OR REPLACE FUNCTION solent_visibility_hop(pks bigint[], numbers text[])
RETURNS bigint[] LANGUAGE sql STABLE AS $$
  WITH wanted AS (
    SELECT n FROM unnest(numbers) AS n WHERE coalesce(n, '') <> ''
    UNION
    SELECT q.nhs_number FROM patient q
     WHERE q.pk = ANY(pks) AND coalesce(q.nhs_number, '') <> ''
  )
  SELECT coalesce(array_agg(DISTINCT x), '{}') FROM (
    SELECT unnest(pks) AS x
    UNION SELECT p.pk FROM patient p WHERE p.nhs_number IN (SELECT n FROM wanted)
    UNION SELECT l.patient_b FROM patient_link l WHERE l.patient_a = ANY(pks)
    UNION SELECT l.patient_a FROM patient_link l WHERE l.patient_b = ANY(pks)
  ) AS around WHERE x IS NOT NULL
$$;
"""

REFRESH_FUNCTION = f"""
CREATE OR REPLACE FUNCTION solent_visibility_refresh(pks bigint[], numbers text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  hood bigint[];
BEGIN
  PERFORM pg_advisory_xact_lock({LOCK_KEY});
  hood := solent_visibility_hop(solent_visibility_hop(pks, numbers), '{{}}');
  DELETE FROM patient_visibility WHERE patient_pk = ANY(hood);
  INSERT INTO patient_visibility (patient_pk, trust_code)
  {RULE_ROWS.format(**IN_HOOD)}
  ON CONFLICT DO NOTHING;
END $$;
"""

# Every row again (the first fill; a bulk load that ran with the triggers off).
REBUILD_FUNCTION = f"""
CREATE OR REPLACE FUNCTION solent_visibility_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock({LOCK_KEY});
  DELETE FROM patient_visibility;
  INSERT INTO patient_visibility (patient_pk, trust_code)
  {RULE_ROWS.format(**EVERYWHERE)}
  ON CONFLICT DO NOTHING;
END $$;
"""

# What `solent check` reports: kept rows the rule does not give, and rows of the rule not kept.
DRIFT_FUNCTION = f"""
CREATE OR REPLACE FUNCTION solent_visibility_drift(OUT missing bigint, OUT extra bigint)
LANGUAGE sql STABLE AS $$
  WITH rule AS ({RULE_ROWS.format(**EVERYWHERE)})
  SELECT
    (SELECT count(*) FROM (SELECT * FROM rule
                           EXCEPT SELECT patient_pk, trust_code FROM patient_visibility) m),
    (SELECT count(*) FROM (SELECT patient_pk, trust_code FROM patient_visibility
                           EXCEPT SELECT * FROM rule) e)
$$;
"""

# OLD is NULL on INSERT and NEW on DELETE (PostgreSQL 11+), so each table's old and new values
# go in together; the NULLs drop out in solent_visibility_hop. An UPDATE that leaves the rule's
# inputs as they were changes nothing.
TRIGGER_FUNCTION = f"""
CREATE OR REPLACE FUNCTION solent_visibility_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_TABLE_NAME = 'patient' THEN
    IF TG_OP = 'UPDATE'
       AND (OLD.issuer, OLD.local_id, OLD.nhs_number, OLD.nhs_number_valid,
            OLD.nhs_number_verified, OLD.birth_date, OLD.sex)
           IS NOT DISTINCT FROM
           (NEW.issuer, NEW.local_id, NEW.nhs_number, NEW.nhs_number_valid,
            NEW.nhs_number_verified, NEW.birth_date, NEW.sex) THEN
      RETURN NULL;
    END IF;
    PERFORM solent_visibility_refresh(
      ARRAY[OLD.pk, NEW.pk], ARRAY[OLD.nhs_number, NEW.nhs_number]);
  ELSIF TG_TABLE_NAME = 'study' THEN
    IF TG_OP = 'UPDATE'
       AND (OLD.patient_pk, OLD.trust_code) = (NEW.patient_pk, NEW.trust_code) THEN
      RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
      -- Already anchored there (its own trust's record, or another study at that trust):
      -- nothing changes. The shared lock waits for recomputations in flight and holds new
      -- ones off until this commits, so none of them misses this study.
      PERFORM pg_advisory_xact_lock_shared({LOCK_KEY});
      IF EXISTS (SELECT 1 FROM patient WHERE pk = NEW.patient_pk AND issuer = NEW.trust_code)
         OR EXISTS (SELECT 1 FROM study WHERE patient_pk = NEW.patient_pk
                    AND trust_code = NEW.trust_code AND pk <> NEW.pk) THEN
        RETURN NULL;
      END IF;
    END IF;
    PERFORM solent_visibility_refresh(ARRAY[OLD.patient_pk, NEW.patient_pk], '{{}}');
  ELSIF TG_TABLE_NAME = 'orders' THEN
    IF TG_OP = 'UPDATE'
       AND (OLD.nhs_number, OLD.patient_issuer, OLD.patient_id, OLD.patient_birth_date,
            OLD.patient_sex)
           IS NOT DISTINCT FROM
           (NEW.nhs_number, NEW.patient_issuer, NEW.patient_id, NEW.patient_birth_date,
            NEW.patient_sex) THEN
      RETURN NULL;
    END IF;
    PERFORM solent_visibility_refresh('{{}}', ARRAY[OLD.nhs_number, NEW.nhs_number]);
  ELSE  -- patient_link
    PERFORM solent_visibility_refresh(
      ARRAY[OLD.patient_a, OLD.patient_b, NEW.patient_a, NEW.patient_b], '{{}}');
  END IF;
  RETURN NULL;
END $$;
"""

TRIGGERS = {
    "patient": "INSERT OR DELETE OR UPDATE OF issuer, local_id, nhs_number, nhs_number_valid, "
    "nhs_number_verified, birth_date, sex",
    "study": "INSERT OR DELETE OR UPDATE OF patient_pk, trust_code",
    "orders": "INSERT OR DELETE OR UPDATE OF nhs_number, patient_issuer, patient_id, "
    "patient_birth_date, patient_sex",
    "patient_link": "INSERT OR DELETE OR UPDATE",
}


def upgrade() -> None:
    op.create_table(
        "patient_visibility",
        sa.Column("patient_pk", PK, nullable=False),
        sa.Column("trust_code", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("patient_pk", "trust_code", name=op.f("pk_patient_visibility")),
    )
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    driver = bind.connection.driver_connection
    assert driver is not None
    # The raw driver: the functions' SQL has colons and percents bind parameters would eat.
    for ddl in (HOP_FUNCTION, REFRESH_FUNCTION, REBUILD_FUNCTION, DRIFT_FUNCTION, TRIGGER_FUNCTION):
        driver.execute(ddl)
    for table, events in TRIGGERS.items():
        driver.execute(
            f"CREATE TRIGGER solent_visibility AFTER {events} ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION solent_visibility_changed()"
        )
    # Triggers first, then the fill under the lock: a node of the previous release writing
    # meanwhile either waits for the fill or is recomputed by its own trigger after it.
    driver.execute("SELECT solent_visibility_rebuild()")
    # Statistics now: without them the planner takes the table for empty and joins it first.
    driver.execute("ANALYZE patient_visibility")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table in TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS solent_visibility ON {table}")
        op.execute("DROP FUNCTION IF EXISTS solent_visibility_changed()")
        op.execute("DROP FUNCTION IF EXISTS solent_visibility_rebuild()")
        op.execute("DROP FUNCTION IF EXISTS solent_visibility_drift()")
        op.execute("DROP FUNCTION IF EXISTS solent_visibility_refresh(bigint[], text[])")
        op.execute("DROP FUNCTION IF EXISTS solent_visibility_hop(bigint[], text[])")
    op.drop_table("patient_visibility")
