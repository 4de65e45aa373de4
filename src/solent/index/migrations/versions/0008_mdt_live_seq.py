"""MDT live rooms: one order of a room's events across nodes (issue 16)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

The number of the room's last presenter/view event, taken under the meeting row's lock by the
transaction that keeps and announces the events, so every node applies them in one order. With
a server default: nodes of the previous release insert meetings without it (rolling upgrade).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mdt_meeting") as batch:
        batch.add_column(
            sa.Column("live_seq", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("mdt_meeting") as batch:
        batch.drop_column("live_seq")
