"""Outside studies held until reconciled (R28); mother and baby relationships (R58)

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-05

A DICOM node can be registered as an outside source (an IEP gateway, another organisation's
PACS): what it stores is held (``held_instance`` kind ``outside``), with the identity and study
it carried, until an identity steward reconciles it to a patient record. ``patient_relation``
records a baby's mother (HL7 PID-21), which is never a link or a merge. Expand-only: nullable
columns, a defaulted flag and a new table the previous release never reads.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

_HELD_COLUMNS = (
    ("kind", 16),
    ("original_issuer", 64),
    ("patient_name", 324),
    ("patient_birth_date", 8),
    ("patient_sex", 16),
    ("study_date", 8),
    ("study_description", 64),
    ("accession_number", 16),
    ("modality", 16),
)


def upgrade() -> None:
    with op.batch_alter_table("dicom_node") as batch:
        batch.add_column(
            sa.Column("outside", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("held_instance") as batch:
        for name, length in _HELD_COLUMNS:
            batch.add_column(sa.Column(name, sa.String(length=length), nullable=True))
    op.create_index(op.f("ix_held_instance_study_uid"), "held_instance", ["study_uid"])
    op.create_table(
        "patient_relation",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("patient_pk", PK, nullable=False),
        sa.Column("relationship", sa.String(length=16), nullable=False),
        sa.Column("related_issuer", sa.String(length=16), nullable=False),
        sa.Column("related_local_id", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=40), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_pk"], ["patient.pk"], name=op.f("fk_patient_relation_patient_pk_patient")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_patient_relation")),
        sa.UniqueConstraint(
            "patient_pk", "relationship", name=op.f("uq_patient_relation_patient_pk_relationship")
        ),
    )
    op.create_index(
        op.f("ix_patient_relation_related_issuer_related_local_id"),
        "patient_relation",
        ["related_issuer", "related_local_id"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_patient_relation_related_issuer_related_local_id"), table_name="patient_relation")
    op.drop_table("patient_relation")
    op.drop_index(op.f("ix_held_instance_study_uid"), table_name="held_instance")
    with op.batch_alter_table("held_instance") as batch:
        for name, _length in reversed(_HELD_COLUMNS):
            batch.drop_column(name)
    with op.batch_alter_table("dicom_node") as batch:
        batch.drop_column("outside")
