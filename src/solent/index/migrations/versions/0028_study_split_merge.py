"""Study split and merge (R57): the series an edit moved, and the study a merge emptied

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-06

Expand-only: a new table and one nullable column the previous release never reads. A split or
merge moves several series at once: ``study_edit_series`` names them (one row each), so a late
instance of one of them still finds the study it went to and a reversal moves the same ones
back. ``study_edit.study_attrs`` keeps the attributes of the study a merge emptied (JSON), so
its reversal brings it back as it was.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("study_edit", sa.Column("study_attrs", sa.Text(), nullable=True))
    op.create_table(
        "study_edit_series",
        sa.Column("edit_pk", PK, nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["edit_pk"],
            ["study_edit.pk"],
            name=op.f("fk_study_edit_series_edit_pk_study_edit"),
        ),
        sa.PrimaryKeyConstraint("edit_pk", "series_uid", name=op.f("pk_study_edit_series")),
    )
    op.create_index(
        op.f("ix_study_edit_series_series_uid"), "study_edit_series", ["series_uid"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_study_edit_series_series_uid"), table_name="study_edit_series")
    op.drop_table("study_edit_series")
    with op.batch_alter_table("study_edit") as batch:
        batch.drop_column("study_attrs")
