"""Legal holds (R43) and retention deletions awaiting a second person's approval (R44)

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05

Expand-only: two new tables the previous release never reads.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "legal_hold",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("issuer", sa.String(length=16), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("nhs_number", sa.String(length=10), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("reference", sa.String(length=200), nullable=False),
        sa.Column("placed_by", sa.String(length=200), nullable=False),
        sa.Column("placed_trust", sa.String(length=16), nullable=True),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lifted_by", sa.String(length=200), nullable=True),
        sa.Column("lifted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lift_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_legal_hold")),
    )
    op.create_index(op.f("ix_legal_hold_study_uid"), "legal_hold", ["study_uid"], unique=False)
    op.create_index(
        op.f("ix_legal_hold_issuer_patient_id"), "legal_hold", ["issuer", "patient_id"], unique=False
    )
    op.create_index(op.f("ix_legal_hold_nhs_number"), "legal_hold", ["nhs_number"], unique=False)
    op.create_table(
        "retention_deletion",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note_uid", sa.String(length=64), nullable=False),
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_issuer", sa.String(length=16), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("requester_user", sa.String(length=200), nullable=True),
        sa.Column("refs", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.String(length=200), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision_note", sa.Text(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_retention_deletion")),
        sa.UniqueConstraint("note_uid", name=op.f("uq_retention_deletion_note_uid")),
    )
    op.create_index(
        op.f("ix_retention_deletion_status"), "retention_deletion", ["status"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_retention_deletion_status"), table_name="retention_deletion")
    op.drop_table("retention_deletion")
    op.drop_index(op.f("ix_legal_hold_nhs_number"), table_name="legal_hold")
    op.drop_index(op.f("ix_legal_hold_issuer_patient_id"), table_name="legal_hold")
    op.drop_index(op.f("ix_legal_hold_study_uid"), table_name="legal_hold")
    op.drop_table("legal_hold")
