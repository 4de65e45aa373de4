"""legacy PACS migration state (issue 13)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('migration_source',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('address', sa.Text(), nullable=False),
    sa.Column('trust_code', sa.String(length=16), nullable=False),
    sa.Column('nhs_traced', sa.Boolean(), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=False),
    sa.Column('associations', sa.Integer(), nullable=False),
    sa.Column('rate', sa.Integer(), nullable=False),
    sa.Column('hours', sa.String(length=11), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['trust_code'], ['trust.code'], name=op.f('fk_migration_source_trust_code_trust')),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_migration_source'))
    )
    op.create_table('migration_item',
    sa.Column('pk', PK, autoincrement=True, nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.String(length=200), nullable=True),
    sa.Column('birth_date', sa.String(length=8), nullable=True),
    sa.Column('sex', sa.String(length=16), nullable=True),
    sa.Column('nhs_number', sa.String(length=16), nullable=True),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('series_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=True),
    sa.Column('study_date', sa.String(length=8), nullable=True),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('locator', sa.Text(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('source_sha256', sa.String(length=64), nullable=True),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['source'], ['migration_source.name'], name=op.f('fk_migration_item_source_migration_source')),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_migration_item')),
    sa.UniqueConstraint('source', 'sop_uid', name=op.f('uq_migration_item_source_sop_uid'))
    )
    op.create_index(op.f('ix_migration_item_source_state'), 'migration_item', ['source', 'state'], unique=False)
    op.create_index(op.f('ix_migration_item_study_uid'), 'migration_item', ['study_uid'], unique=False)
    op.create_table('migration_patient',
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('demographics', sa.Text(), nullable=False),
    sa.Column('patient_pk', PK, nullable=True),
    sa.Column('owns_record', sa.Boolean(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['source'], ['migration_source.name'], name=op.f('fk_migration_patient_source_migration_source')),
    sa.PrimaryKeyConstraint('source', 'patient_id', name=op.f('pk_migration_patient'))
    )
    op.create_table('migration_quarantine',
    sa.Column('pk', PK, autoincrement=True, nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('sop_uid', sa.String(length=64), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('archive_sha256', sa.String(length=64), nullable=False),
    sa.Column('source_sha256', sa.String(length=64), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['source'], ['migration_source.name'], name=op.f('fk_migration_quarantine_source_migration_source')),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_migration_quarantine')),
    sa.UniqueConstraint('source', 'sop_uid', 'source_sha256', name=op.f('uq_migration_quarantine_source_sop_uid_source_sha256'))
    )


def downgrade() -> None:
    op.drop_table('migration_quarantine')
    op.drop_table('migration_patient')
    op.drop_index(op.f('ix_migration_item_study_uid'), table_name='migration_item')
    op.drop_index(op.f('ix_migration_item_source_state'), table_name='migration_item')
    op.drop_table('migration_item')
    op.drop_table('migration_source')
