"""security: regional admins, session epochs, the audit key fingerprint

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

* ``app_user.trust_code`` may be NULL: a regional administrator belongs to no trust.
* ``app_user.session_epoch``: bearer tokens carry it; a password change bumps it.
* ``audit_head.key_id``: fingerprint of the HMAC key sealing the audit chain. Rows written
  before this revision keep their plain SHA-256 hashes until ``solent audit seal``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("app_user") as batch:
        batch.alter_column("trust_code", existing_type=sa.String(length=16), nullable=True)
        batch.add_column(
            sa.Column("session_epoch", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("audit_head") as batch:
        batch.add_column(sa.Column("key_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("key_id")
    with op.batch_alter_table("app_user") as batch:
        batch.drop_column("session_epoch")
        batch.alter_column("trust_code", existing_type=sa.String(length=16), nullable=False)
