"""Retention engine per study (R42): pathway flags, and the date of death and latest visit
that ADT sends (PID-29; A01/A03/A04); the audit trail's checkpoint after a purge (R38)

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-05

Expand-only: a new table and nullable columns the previous release never reads.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retention_flag",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("issuer", sa.String(length=16), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("since", sa.String(length=8), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("set_by", sa.String(length=200), nullable=False),
        sa.Column("set_trust", sa.String(length=16), nullable=True),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_by", sa.String(length=200), nullable=True),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("remove_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_retention_flag")),
    )
    op.create_index(
        op.f("ix_retention_flag_study_uid"), "retention_flag", ["study_uid"], unique=False
    )
    op.create_index(
        op.f("ix_retention_flag_issuer_patient_id"),
        "retention_flag",
        ["issuer", "patient_id"],
        unique=False,
    )
    with op.batch_alter_table("patient_contact") as batch:
        batch.add_column(sa.Column("death_date", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("last_visit", sa.String(length=8), nullable=True))
    with op.batch_alter_table("audit_head") as batch:
        batch.add_column(sa.Column("base_seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("base_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("base_mac", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("base_mac")
        batch.drop_column("base_hash")
        batch.drop_column("base_seq")
    with op.batch_alter_table("patient_contact") as batch:
        batch.drop_column("last_visit")
        batch.drop_column("death_date")
    op.drop_index(op.f("ix_retention_flag_issuer_patient_id"), table_name="retention_flag")
    op.drop_index(op.f("ix_retention_flag_study_uid"), table_name="retention_flag")
    op.drop_table("retention_flag")
