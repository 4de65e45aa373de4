"""regional scale: change-feed cursors, blob fixity checks, procrastinate's job queue

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

On PostgreSQL this also installs the schema of procrastinate (the job queue, pinned in
pyproject.toml) from the installed package, so `solent db upgrade` is the only schema step.
A later procrastinate release brings its own SQL migrations: apply them in a new revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = '0004'
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


# Changes that alter who may see what, or who a caller is: the database announces each on the
# channel solent.services.broadcast.ACCESS_CHANNEL when it commits, whatever code made it, so
# every node drops its access and look-up caches at once (statement-level: one note a statement).
ACCESS_TRIGGERS = {
    "app_user": "INSERT OR UPDATE OR DELETE",
    "api_token": "INSERT OR UPDATE OR DELETE",
    "break_glass": "INSERT OR UPDATE OR DELETE",
    "patient_link": "INSERT OR UPDATE OR DELETE",
    "hl7_sender": "INSERT OR UPDATE OR DELETE",
    "dicom_node": "INSERT OR UPDATE OR DELETE",
    "trust": "INSERT OR UPDATE OR DELETE",
    "patient": "UPDATE OF issuer, local_id, nhs_number OR DELETE",
    "study": "UPDATE OF patient_pk OR DELETE",
}
NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION solent_notify_access_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('solent_access_changed', json_build_object('table', TG_TABLE_NAME)::text);
  RETURN NULL;
END $$;
"""


def upgrade() -> None:
    op.create_table(
        "feed_cursor",
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("seq", PK, nullable=False),
        sa.PrimaryKeyConstraint("consumer", name=op.f("pk_feed_cursor")),
    )
    op.create_table(
        "blob_check",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("blob_key", sa.String(length=200), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_blob_check")),
    )
    op.create_index(
        op.f("ix_blob_check_sop_instance_uid"), "blob_check", ["sop_instance_uid"], unique=False
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        from procrastinate.schema import SchemaManager

        # The raw driver connection: the schema's SQL has % and : that bind parameters would eat.
        bind.connection.driver_connection.execute(SchemaManager.get_schema())  # type: ignore[union-attr]
        bind.connection.driver_connection.execute(NOTIFY_FUNCTION)  # type: ignore[union-attr]
        for table, events in ACCESS_TRIGGERS.items():
            op.execute(
                f"CREATE TRIGGER solent_access_changed AFTER {events} ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION solent_notify_access_changed()"
            )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table in ACCESS_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS solent_access_changed ON {table}")
        op.execute("DROP FUNCTION IF EXISTS solent_notify_access_changed()")
        bind.connection.driver_connection.execute(  # type: ignore[union-attr]
            """
            DO $$ DECLARE r record; BEGIN
              FOR r IN SELECT tablename FROM pg_tables
                       WHERE schemaname = current_schema() AND tablename LIKE 'procrastinate%'
              LOOP EXECUTE format('DROP TABLE IF EXISTS %I CASCADE', r.tablename); END LOOP;
              FOR r IN SELECT p.oid::regprocedure AS f FROM pg_proc p
                       JOIN pg_namespace n ON n.oid = p.pronamespace
                       WHERE n.nspname = current_schema() AND p.proname LIKE 'procrastinate%'
              LOOP EXECUTE format('DROP FUNCTION IF EXISTS %s CASCADE', r.f); END LOOP;
              FOR r IN SELECT typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                       WHERE n.nspname = current_schema() AND typname LIKE 'procrastinate%'
                         AND t.typtype IN ('e', 'c')
              LOOP EXECUTE format('DROP TYPE IF EXISTS %I CASCADE', r.typname); END LOOP;
            END $$;
            """
        )
    op.drop_index(op.f("ix_blob_check_sop_instance_uid"), table_name="blob_check")
    op.drop_table("blob_check")
    op.drop_table("feed_cursor")
