"""National RBAC roles of local users (R33)

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-05

Expand-only: one nullable column the previous release never reads. ``app_user.national_roles``
holds the national roles an administrator assigned to a local account (a JSON list of
``{"org", "job_role", "activities"}``); NULL: none (the account's Solent roles apply).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("app_user", sa.Column("national_roles", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("app_user") as batch:
        batch.drop_column("national_roles")
