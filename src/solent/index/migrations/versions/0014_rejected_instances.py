"""IOCM rejection notes (R56): instances withdrawn from the query tables, kept by policy

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05

A rejection note (a Key Object Selection titled 113001, 113037, 113038 or 113039) withdraws
the instances it lists: their rows leave ``instance``; each gets a ``rejected_instance`` row
naming its kept blob and the note. Expand-only: a new table the previous release never reads.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rejected_instance",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("blob_key", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("patient_issuer", sa.String(length=16), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("note_uid", sa.String(length=64), nullable=False),
        sa.Column("rejected_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_rejected_instance")),
        sa.UniqueConstraint("sop_uid", name=op.f("uq_rejected_instance_sop_uid")),
    )
    op.create_index(
        op.f("ix_rejected_instance_study_uid"), "rejected_instance", ["study_uid"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_rejected_instance_study_uid"), table_name="rejected_instance")
    op.drop_table("rejected_instance")
