"""Instances held for identity reconciliation (issue 11, "not visible = not found")

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05

A C-STORE or STOW-RS instance naming a study or series already filed under a patient record
the sender may not see is kept (blob under its own key) and filed under no patient, answered
as stored so the sender learns nothing of the other record; a regional work-queue item asks a
person to decide. Expand-only: a new table the previous release never reads (rolling upgrade).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "held_instance",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=True),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sender", sa.String(length=200), nullable=False),
        sa.Column("sender_trust", sa.String(length=16), nullable=True),
        sa.Column("patient_issuer", sa.String(length=16), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("holder_pk", PK, nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("work_item", PK, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_held_instance")),
        sa.UniqueConstraint("sop_uid", "sha256", name=op.f("uq_held_instance_sop_uid_sha256")),
    )


def downgrade() -> None:
    op.drop_table("held_instance")
