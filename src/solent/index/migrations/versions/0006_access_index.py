"""study (patient_pk, trust_code): the access rule's "has a study at the trust" without heap reads

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

An expand-only step (docs/operations.md, rolling upgrade): the previous release runs on the
database before and after it. On PostgreSQL the index is built CONCURRENTLY, outside a
transaction, so the nodes still serving keep storing while a 10 M-study table is indexed.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

NAME = "ix_study_patient_pk_trust_code"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(
                NAME,
                "study",
                ["patient_pk", "trust_code"],
                postgresql_concurrently=True,
                if_not_exists=True,
            )
    else:
        op.create_index(NAME, "study", ["patient_pk", "trust_code"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.drop_index(NAME, table_name="study", postgresql_concurrently=True)
    else:
        op.drop_index(NAME, table_name="study")
