"""Failed jobs of the in-process queue (SQLite), kept for `solent jobs list` and `jobs retry`

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-06

Expand-only: a new table the previous release never reads. Only the embedded default's
in-process queue writes it (procrastinate keeps its own failed jobs on PostgreSQL); it is
created on both dialects so the schema stays one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "failed_job",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("seq", PK, nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("args", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_failed_job")),
    )
    op.create_index(
        op.f("ix_failed_job_status_consumer"), "failed_job", ["status", "consumer"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_failed_job_status_consumer"), table_name="failed_job")
    op.drop_table("failed_job")
