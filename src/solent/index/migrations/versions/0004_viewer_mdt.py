"""viewer key images, recent patients and MDT meetings (issue 12)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('key_image',
    sa.Column('pk', PK, autoincrement=True, nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('series_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_uid', sa.String(length=64), nullable=False),
    sa.Column('frame', sa.Integer(), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_key_image'))
    )
    op.create_index(op.f('ix_key_image_study_uid'), 'key_image', ['study_uid'], unique=False)
    op.create_table('viewer_recent',
    sa.Column('user_name', sa.String(length=200), nullable=False),
    sa.Column('patient_issuer', sa.String(length=16), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('user_name', 'patient_issuer', 'patient_id', name=op.f('pk_viewer_recent'))
    )
    op.create_table('mdt_meeting',
    sa.Column('pk', PK, autoincrement=True, nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('date', sa.String(length=10), nullable=False),
    sa.Column('team', sa.String(length=200), nullable=False),
    sa.Column('coordinator', sa.String(length=200), nullable=False),
    sa.Column('presenter', sa.String(length=200), nullable=True),
    sa.Column('prefetch_state', sa.String(length=16), nullable=False),
    sa.Column('prefetch_done', sa.Integer(), nullable=False),
    sa.Column('prefetch_total', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_mdt_meeting'))
    )
    op.create_index(op.f('ix_mdt_meeting_date'), 'mdt_meeting', ['date'], unique=False)
    op.create_table('mdt_item',
    sa.Column('pk', PK, autoincrement=True, nullable=False),
    sa.Column('meeting_pk', PK, nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('patient_issuer', sa.String(length=16), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('study_uids', sa.Text(), nullable=False),
    sa.Column('outcome', sa.Text(), nullable=True),
    sa.Column('outcome_by', sa.String(length=200), nullable=True),
    sa.Column('outcome_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['meeting_pk'], ['mdt_meeting.pk'], name=op.f('fk_mdt_item_meeting_pk_mdt_meeting')),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_mdt_item'))
    )
    op.create_index(op.f('ix_mdt_item_meeting_pk'), 'mdt_item', ['meeting_pk'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_mdt_item_meeting_pk'), table_name='mdt_item')
    op.drop_table('mdt_item')
    op.drop_index(op.f('ix_mdt_meeting_date'), table_name='mdt_meeting')
    op.drop_table('mdt_meeting')
    op.drop_table('viewer_recent')
    op.drop_index(op.f('ix_key_image_study_uid'), table_name='key_image')
    op.drop_table('key_image')
