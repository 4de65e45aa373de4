"""R6: whether a patient record's name, date of birth and sex came from PDS

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05

Set when a trust's feed sends the record with its NHS number traced on PDS (NSTS01); an update
that is not traced (a local edit) then leaves those demographics alone. Expand-only, with a
server default: nodes of the previous release insert patients without it (rolling upgrade).
Existing records start as not PDS-sourced: nothing recorded says where their demographics
came from, and the next traced message from their trust marks them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("patient") as batch:
        batch.add_column(
            sa.Column(
                "pds_demographics", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("patient") as batch:
        batch.drop_column("pds_demographics")
