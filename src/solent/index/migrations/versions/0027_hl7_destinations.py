"""Registered HL7 destinations: the RIS of each trust, told of study edits (R57)

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-06

Expand-only: a new table the previous release never reads.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hl7_destination",
        sa.Column("trust_code", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("application", sa.String(length=227), nullable=False),
        sa.Column("facility", sa.String(length=227), nullable=False),
        sa.Column("tls", sa.Boolean(), nullable=False),
        sa.Column("tls_ca", sa.String(length=1000), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["trust_code"], ["trust.code"], name=op.f("fk_hl7_destination_trust_code_trust")
        ),
        sa.PrimaryKeyConstraint("trust_code", name=op.f("pk_hl7_destination")),
    )


def downgrade() -> None:
    op.drop_table("hl7_destination")
