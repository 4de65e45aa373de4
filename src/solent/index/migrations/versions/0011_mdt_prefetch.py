"""MDT prefetch: a meeting's start time, when it was last warmed, and progress per item

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05

Issue 12: a meeting's studies are warmed when it is created and again shortly before it
starts (``time``, HH:MM, the server's local time; ``prefetched_at`` says whether the warming
before the start ran). ``prefetch_base`` is the URL base the metadata was asked under (the
cache key of series metadata holds it). Each item shows its own prefetch state and how many
resources were warmed. Expand-only: every column nullable (rolling upgrade).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mdt_meeting") as batch:
        batch.add_column(sa.Column("time", sa.String(5), nullable=True))
        batch.add_column(sa.Column("prefetch_base", sa.String(500), nullable=True))
        batch.add_column(sa.Column("prefetched_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("mdt_item") as batch:
        batch.add_column(sa.Column("prefetch_state", sa.String(16), nullable=True))
        batch.add_column(sa.Column("prefetch_warmed", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mdt_item") as batch:
        batch.drop_column("prefetch_warmed")
        batch.drop_column("prefetch_state")
    with op.batch_alter_table("mdt_meeting") as batch:
        batch.drop_column("prefetched_at")
        batch.drop_column("prefetch_base")
        batch.drop_column("time")
