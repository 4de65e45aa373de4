"""patient_visibility: an order no longer anchors a record an "unlinked" decision separates
from the order's own record (PostgreSQL)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05

The rule of index/access.py changed: ZZB's order for B7654321 anchored, at ZZB, every record
carrying the same traced NHS number, ZZA's A123456 included after the EMPI's A37 had said the
two are not one person (regional-requirements §2.4, R9). The kept rows of 0009 follow the rule
through the functions that compute them; this replaces those functions with the amended rule
and recomputes every row. The triggers are unchanged (an unlink already recomputes both records'
neighbourhood, which holds the records an order for either anchors). Nothing to do on SQLite,
which evaluates the rule in the query.
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_V0009 = importlib.import_module("solent.index.migrations.versions.0009_patient_visibility")

#: The order anchor of 0009's rule, which ends with its own record's EXISTS ...
_ORDERED = """
     AND EXISTS (
       SELECT 1 FROM patient r
        WHERE r.issuer = o.patient_issuer AND r.local_id = o.patient_id
          AND r.nhs_number = o.nhs_number AND r.nhs_number_verified IS TRUE)
"""
# ... to which the amended rule adds: no "unlinked" decision between it and the anchored record.
_ORDERED_NOT_SEPARATED = """
     AND EXISTS (
       SELECT 1 FROM patient r
        WHERE r.issuer = o.patient_issuer AND r.local_id = o.patient_id
          AND r.nhs_number = o.nhs_number AND r.nhs_number_verified IS TRUE
          AND NOT EXISTS (
            SELECT 1 FROM patient_link u WHERE u.status = 'unlinked'
             AND ((u.patient_a = r.pk AND u.patient_b = q.pk)
                  OR (u.patient_a = q.pk AND u.patient_b = r.pk))))
"""


def _functions(rule_rows: str) -> tuple[str, ...]:
    """0009's refresh, rebuild and drift functions, computing ``rule_rows``."""
    lock = _V0009.LOCK_KEY
    hood, everywhere = _V0009.IN_HOOD, _V0009.EVERYWHERE
    refresh = f"""
CREATE OR REPLACE FUNCTION solent_visibility_refresh(pks bigint[], numbers text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  hood bigint[];
BEGIN
  PERFORM pg_advisory_xact_lock({lock});
  hood := solent_visibility_hop(solent_visibility_hop(pks, numbers), '{{}}');
  DELETE FROM patient_visibility WHERE patient_pk = ANY(hood);
  INSERT INTO patient_visibility (patient_pk, trust_code)
  {rule_rows.format(**hood)}
  ON CONFLICT DO NOTHING;
END $$;
"""
    rebuild = f"""
CREATE OR REPLACE FUNCTION solent_visibility_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock({lock});
  DELETE FROM patient_visibility;
  INSERT INTO patient_visibility (patient_pk, trust_code)
  {rule_rows.format(**everywhere)}
  ON CONFLICT DO NOTHING;
END $$;
"""
    drift = f"""
CREATE OR REPLACE FUNCTION solent_visibility_drift(OUT missing bigint, OUT extra bigint)
LANGUAGE sql STABLE AS $$
  WITH rule AS ({rule_rows.format(**everywhere)})
  SELECT
    (SELECT count(*) FROM (SELECT * FROM rule
                           EXCEPT SELECT patient_pk, trust_code FROM patient_visibility) m),
    (SELECT count(*) FROM (SELECT patient_pk, trust_code FROM patient_visibility
                           EXCEPT SELECT * FROM rule) e)
$$;
"""
    return refresh, rebuild, drift


def _replace(rule_rows: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    driver = bind.connection.driver_connection
    assert driver is not None
    # The raw driver, as 0009: the functions' SQL has colons bind parameters would eat.
    for ddl in _functions(rule_rows):
        driver.execute(ddl)
    driver.execute("SELECT solent_visibility_rebuild()")
    driver.execute("ANALYZE patient_visibility")


def upgrade() -> None:
    rule: str = _V0009.RULE_ROWS
    assert rule.count(_ORDERED) == 1, "0009's order anchor is not where 0013 expects it"
    _replace(rule.replace(_ORDERED, _ORDERED_NOT_SEPARATED))


def downgrade() -> None:
    _replace(_V0009.RULE_ROWS)
