"""IHE Instance Availability Notification (R20): nodes that subscribe, and the SOP class of a
rejected instance (an IAN names it as UNAVAILABLE with its class)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05

Expand-only: two nullable/defaulted columns the previous release never reads.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dicom_node") as batch:
        batch.add_column(
            sa.Column("allow_notify", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("rejected_instance") as batch:
        batch.add_column(sa.Column("sop_class_uid", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rejected_instance") as batch:
        batch.drop_column("sop_class_uid")
    with op.batch_alter_table("dicom_node") as batch:
        batch.drop_column("allow_notify")
