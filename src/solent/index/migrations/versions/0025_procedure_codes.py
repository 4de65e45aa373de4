"""Procedure codes mapped to NICIP / SNOMED CT (R19), what prior prefetch compares (R47)

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-05

Expand-only: three nullable columns of order_context and a new table the previous release
never reads.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("order_context") as batch:
        batch.add_column(sa.Column("nicip_code", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("snomed_code", sa.String(length=18), nullable=True))
        batch.add_column(sa.Column("body_region", sa.String(length=32), nullable=True))
    op.create_table(
        "study_procedure",
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=True),
        sa.Column("coding_system", sa.String(length=32), nullable=True),
        sa.Column("meaning", sa.String(length=200), nullable=True),
        sa.Column("nicip_code", sa.String(length=16), nullable=True),
        sa.Column("snomed_code", sa.String(length=18), nullable=True),
        sa.Column("body_region", sa.String(length=32), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("study_uid", name=op.f("pk_study_procedure")),
    )


def downgrade() -> None:
    op.drop_table("study_procedure")
    with op.batch_alter_table("order_context") as batch:
        batch.drop_column("body_region")
        batch.drop_column("snomed_code")
        batch.drop_column("nicip_code")
