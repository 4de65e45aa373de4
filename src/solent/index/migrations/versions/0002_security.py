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

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TOKEN_COLUMNS = "pk, token_sha256, user_name, label, created_at, expires_at, revoked"


def _create_api_token() -> None:
    op.create_table(
        "api_token",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("user_name", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_name"], ["app_user.name"], name=op.f("fk_api_token_user_name_app_user")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_api_token")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_api_token_token_sha256")),
    )


def _rebuilding_app_user(change: Callable[[], None]) -> None:
    """SQLite changes a column's NULL-ability by rebuilding the table (batch mode), and cannot
    drop a table other rows reference while foreign keys are on (they cannot be switched off
    inside the migration's transaction): api_token, its only child, is set aside meanwhile."""
    if op.get_bind().dialect.name != "sqlite":
        change()
        return
    op.execute(f"CREATE TEMP TABLE _api_token_keep AS SELECT {_TOKEN_COLUMNS} FROM api_token")
    op.drop_table("api_token")
    change()
    _create_api_token()
    op.execute(
        f"INSERT INTO api_token ({_TOKEN_COLUMNS}) SELECT {_TOKEN_COLUMNS} FROM _api_token_keep"
    )
    op.execute("DROP TABLE _api_token_keep")


def upgrade() -> None:
    def change() -> None:
        with op.batch_alter_table("app_user") as batch:
            batch.alter_column("trust_code", existing_type=sa.String(length=16), nullable=True)
            batch.add_column(
                sa.Column("session_epoch", sa.Integer(), nullable=False, server_default="0")
            )

    _rebuilding_app_user(change)
    with op.batch_alter_table("audit_head") as batch:
        batch.add_column(sa.Column("key_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    def change() -> None:
        with op.batch_alter_table("app_user") as batch:
            batch.drop_column("session_epoch")
            batch.alter_column("trust_code", existing_type=sa.String(length=16), nullable=False)

    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("key_id")
    _rebuilding_app_user(change)
