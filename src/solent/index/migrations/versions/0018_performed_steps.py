"""Modality Performed Procedure Steps (R17): the steps modalities report over MPPS

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05

Expand-only: a new table the previous release never reads.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "performed_step",
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trust_code", sa.String(length=16), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("accession_number", sa.String(length=16), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("performed_step_id", sa.String(length=16), nullable=True),
        sa.Column("description", sa.String(length=64), nullable=True),
        sa.Column("dataset", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["trust_code"], ["trust.code"], name=op.f("fk_performed_step_trust_code_trust")
        ),
        sa.PrimaryKeyConstraint("sop_instance_uid", name=op.f("pk_performed_step")),
    )
    op.create_index(
        op.f("ix_performed_step_study_uid"), "performed_step", ["study_uid"], unique=False
    )
    op.create_index(
        op.f("ix_performed_step_trust_code_updated_at"),
        "performed_step",
        ["trust_code", "updated_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_performed_step_trust_code_updated_at"), table_name="performed_step")
    op.drop_index(op.f("ix_performed_step_study_uid"), table_name="performed_step")
    op.drop_table("performed_step")
