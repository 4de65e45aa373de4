"""MDT outcomes recorded against the studies reviewed, discrepancy notices to the primary
reporter, and the reporter's ID from OBR-32 (R32)

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-05

Expand-only: two new tables and a nullable column the previous release never reads.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("report", sa.Column("interpreter_id", sa.String(length=64), nullable=True))
    op.create_table(
        "mdt_outcome",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("meeting_pk", PK, nullable=False),
        sa.Column("item_pk", PK, nullable=False),
        sa.Column("patient_issuer", sa.String(length=16), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("opinion", sa.Text(), nullable=False),
        sa.Column("plan", sa.Text(), nullable=False),
        sa.Column("discrepancy", sa.Boolean(), nullable=False),
        sa.Column("discrepancy_note", sa.Text(), nullable=True),
        sa.Column("recorded_by", sa.String(length=200), nullable=False),
        sa.Column("recorded_trust", sa.String(length=16), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["meeting_pk"], ["mdt_meeting.pk"], name=op.f("fk_mdt_outcome_meeting_pk_mdt_meeting")
        ),
        sa.ForeignKeyConstraint(
            ["item_pk"], ["mdt_item.pk"], name=op.f("fk_mdt_outcome_item_pk_mdt_item")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_mdt_outcome")),
    )
    op.create_index(op.f("ix_mdt_outcome_item_pk"), "mdt_outcome", ["item_pk"], unique=False)
    op.create_table(
        "mdt_outcome_study",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("outcome_pk", PK, nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uids", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["outcome_pk"],
            ["mdt_outcome.pk"],
            name=op.f("fk_mdt_outcome_study_outcome_pk_mdt_outcome"),
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_mdt_outcome_study")),
    )
    op.create_index(
        op.f("ix_mdt_outcome_study_study_uid"), "mdt_outcome_study", ["study_uid"], unique=False
    )
    op.create_index(
        op.f("ix_mdt_outcome_study_outcome_pk"), "mdt_outcome_study", ["outcome_pk"], unique=False
    )
    op.create_table(
        "reporter_notice",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("outcome_pk", PK, nullable=False),
        sa.Column("trust", sa.String(length=16), nullable=False),
        sa.Column("reporter_id", sa.String(length=64), nullable=True),
        sa.Column("reporter_name", sa.String(length=200), nullable=True),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("accession_number", sa.String(length=16), nullable=False),
        sa.Column("report_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("acknowledged_by", sa.String(length=200), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("response", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["outcome_pk"],
            ["mdt_outcome.pk"],
            name=op.f("fk_reporter_notice_outcome_pk_mdt_outcome"),
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_reporter_notice")),
    )
    op.create_index(
        op.f("ix_reporter_notice_trust_status"), "reporter_notice", ["trust", "status"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_reporter_notice_trust_status"), table_name="reporter_notice")
    op.drop_table("reporter_notice")
    op.drop_index(op.f("ix_mdt_outcome_study_outcome_pk"), table_name="mdt_outcome_study")
    op.drop_index(op.f("ix_mdt_outcome_study_study_uid"), table_name="mdt_outcome_study")
    op.drop_table("mdt_outcome_study")
    op.drop_index(op.f("ix_mdt_outcome_item_pk"), table_name="mdt_outcome")
    op.drop_table("mdt_outcome")
    with op.batch_alter_table("report") as batch:
        batch.drop_column("interpreter_id")
