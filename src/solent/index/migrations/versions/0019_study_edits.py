"""Study edit and move (R57): corrections of studies filed under the wrong patient or order

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05

Expand-only: a new table the previous release never reads. A study moved by an edit is the
study row's ``patient_pk`` changed (what an A40 merge already does), so nothing else changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_edit",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=True),
        sa.Column("new_study_uid", sa.String(length=64), nullable=True),
        sa.Column("from_patient_pk", PK, nullable=True),
        sa.Column("from_issuer", sa.String(length=16), nullable=True),
        sa.Column("from_local_id", sa.String(length=64), nullable=True),
        sa.Column("to_patient_pk", PK, nullable=True),
        sa.Column("to_issuer", sa.String(length=16), nullable=True),
        sa.Column("to_local_id", sa.String(length=64), nullable=True),
        sa.Column("old_accession", sa.String(length=16), nullable=True),
        sa.Column("old_accession_issuer", sa.String(length=64), nullable=True),
        sa.Column("new_accession", sa.String(length=16), nullable=True),
        sa.Column("new_accession_issuer", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("reverses", PK, nullable=True),
        sa.Column("reversed_by", PK, nullable=True),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(length=200), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_study_edit")),
    )
    op.create_index(op.f("ix_study_edit_study_uid"), "study_edit", ["study_uid"], unique=False)
    op.create_index(
        op.f("ix_study_edit_new_study_uid"), "study_edit", ["new_study_uid"], unique=False
    )
    op.create_index(op.f("ix_study_edit_status"), "study_edit", ["status"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_study_edit_status"), table_name="study_edit")
    op.drop_index(op.f("ix_study_edit_new_study_uid"), table_name="study_edit")
    op.drop_index(op.f("ix_study_edit_study_uid"), table_name="study_edit")
    op.drop_table("study_edit")
