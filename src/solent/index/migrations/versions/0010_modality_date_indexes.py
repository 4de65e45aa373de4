"""Per-modality date indexes: a date range + modality page reads only that modality's studies

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05

Issue 16: "CT studies of 2020, newest first" walked the date index over every modality and
filtered on the study row (one CT in five studies: ~1,000 heap rows for a 100-study page at
10 M studies, 3-4 ms of PostgreSQL). A partial index per common modality, in the order the
pages are read, holds only that modality's studies; the planner uses it whenever the query's
ModalitiesInStudy filter (index/query.py, ``_in_study_modalities``) names that one modality.
Its predicate must stay the very expression that filter compiles to.

Expand-only (docs/operations.md, rolling upgrade): built CONCURRENTLY, outside a transaction,
so nodes still serving keep storing. At 10 M studies each took 2-4 s here. SQLite, the
one-process default, does without.
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

#: The modalities of nearly every study of a radiology department (DICOM PS3.3 C.7.3.1.1.1).
MODALITIES = ("CR", "DX", "US", "CT", "MR", "MG", "XA", "RF", "NM", "PT", "MX", "OT")


def name(modality: str) -> str:
    return f"ix_study_date_key_pk_{modality.lower()}"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    with op.get_context().autocommit_block():
        for modality in MODALITIES:
            op.execute(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name(modality)} "
                "ON study (study_date_key DESC, pk DESC) "
                f"WHERE strpos(('\\' || modalities::text) || '\\', '\\{modality}\\') > 0"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    with op.get_context().autocommit_block():
        for modality in MODALITIES:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name(modality)}")
