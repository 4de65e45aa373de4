"""R30: the references of stored key objects and presentation states

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05

A Key Object Selection that is not a rejection note (a key image note, IHE KIN) and every
Softcopy Presentation State keep, at ingest, one ``key_object_reference`` row per instance they
reference, so those pointing at instances a rejection note withdraws can be flagged.
Expand-only: a new table the previous release never reads. Objects stored before this
revision have no rows (they are not flagged; re-sending them fills the table).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_INDEXED = ("object_sop_uid", "object_study_uid", "ref_sop_uid", "stored_by")


def upgrade() -> None:
    op.create_table(
        "key_object_reference",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("object_sop_uid", sa.String(length=64), nullable=False),
        sa.Column("object_series_uid", sa.String(length=64), nullable=False),
        sa.Column("object_study_uid", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=2), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("stored_by", sa.String(length=200), nullable=False),
        sa.Column("ref_study_uid", sa.String(length=64), nullable=False),
        sa.Column("ref_series_uid", sa.String(length=64), nullable=False),
        sa.Column("ref_sop_uid", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_key_object_reference")),
    )
    for column in _INDEXED:
        op.create_index(
            op.f(f"ix_key_object_reference_{column}"),
            "key_object_reference",
            [column],
            unique=False,
        )


def downgrade() -> None:
    for column in _INDEXED:
        op.drop_index(op.f(f"ix_key_object_reference_{column}"), table_name="key_object_reference")
    op.drop_table("key_object_reference")
