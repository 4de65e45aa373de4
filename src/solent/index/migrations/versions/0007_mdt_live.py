"""MDT live rooms across nodes: the presenter's latest view kept with the meeting (issue 16)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

A node that opens a meeting's room after it started (a late joiner connected to another node)
reads the current view from here; later changes reach it by LISTEN/NOTIFY. A nullable column:
nodes of the previous release ignore it (rolling upgrade).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mdt_meeting") as batch:
        batch.add_column(sa.Column("live_view", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mdt_meeting") as batch:
        batch.drop_column("live_view")
