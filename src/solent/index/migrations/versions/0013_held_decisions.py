"""Held instances decided by a person: who released or discarded one, when and why

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05

A regional identity administrator releases a held instance (filed through ingest once its
UIDs no longer belong to another person) or discards it (a reason is required; the kept copy
is removed, the row stays as the record of what happened). The sender's AE title is kept for
the person who decides. Expand-only: nullable columns and an index the previous release never
reads (rolling upgrade).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("held_instance") as batch:
        batch.add_column(sa.Column("calling_ae", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("resolved_by", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("resolution", sa.Text(), nullable=True))
    op.create_index(op.f("ix_held_instance_status"), "held_instance", ["status"])


def downgrade() -> None:
    op.drop_index(op.f("ix_held_instance_status"), table_name="held_instance")
    with op.batch_alter_table("held_instance") as batch:
        batch.drop_column("resolution")
        batch.drop_column("resolved_at")
        batch.drop_column("resolved_by")
        batch.drop_column("calling_ae")
