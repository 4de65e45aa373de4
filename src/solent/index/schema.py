"""Tables of the index (SQLAlchemy Core). Alembic migrations create exactly these.

Patients are keyed by (issuer, local_id): the issuer is the trust that assigned the hospital
number, so the same local ID at two trusts is two patients, always.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Autoincrement BIGINT on PostgreSQL, INTEGER PRIMARY KEY (rowid) on SQLite.
PK = BigInteger().with_variant(Integer(), "sqlite")

trust = Table(
    "trust",
    metadata,
    Column("code", String(16), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

dicom_node = Table(
    "dicom_node",
    metadata,
    Column("ae_title", String(16), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("trust_code", String(16), ForeignKey("trust.code"), nullable=False),
    Column("allow_store", Boolean, nullable=False),
    Column("allow_query", Boolean, nullable=False),
    Column("allow_retrieve", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

patient = Table(
    "patient",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("issuer", String(16), ForeignKey("trust.code"), nullable=False),
    Column("local_id", String(64), nullable=False),
    Column("name", String(324)),
    Column("name_upper", String(324)),
    Column("birth_date", String(8)),
    Column("sex", String(16)),
    Column("nhs_number", String(10)),
    Column("nhs_number_valid", Boolean),
    Column("nhs_number_verified", Boolean, nullable=False, default=False),
    Column("placeholder", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("issuer", "local_id"),
    Index(None, "nhs_number"),
    Index(None, "name_upper"),
)

study = Table(
    "study",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("study_uid", String(64), nullable=False, unique=True),
    Column("patient_pk", PK, ForeignKey("patient.pk"), nullable=False),
    Column("trust_code", String(16), ForeignKey("trust.code"), nullable=False),
    Column("study_date", String(8)),
    Column("study_time", String(16)),
    Column("accession_number", String(16)),
    Column("accession_issuer", String(64)),
    Column("study_id", String(16)),
    Column("study_description", String(64)),
    Column("referring_physician", String(324)),
    Column("modalities", String(200), nullable=False, default=""),
    Column("num_series", Integer, nullable=False, default=0),
    Column("num_instances", Integer, nullable=False, default=0),
    Column("size_bytes", BigInteger, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index(None, "patient_pk"),
    Index(None, "study_date"),
    Index(None, "accession_number"),
)

series = Table(
    "series",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("series_uid", String(64), nullable=False, unique=True),
    Column("study_pk", PK, ForeignKey("study.pk"), nullable=False),
    Column("modality", String(16)),
    Column("series_number", Integer),
    Column("series_description", String(64)),
    Column("body_part", String(16)),
    Column("series_date", String(8)),
    Column("series_time", String(16)),
    Column("num_instances", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index(None, "study_pk"),
)

instance = Table(
    "instance",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("series_pk", PK, ForeignKey("series.pk"), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("number_of_frames", Integer),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("blob_key", String(160), nullable=False),
    Column("frames", Text),  # JSON [[[offset, length], ...], ...] per frame, or NULL
    Column("trust_code", String(16), ForeignKey("trust.code"), nullable=False),
    Column("received_via", String(16), nullable=False),
    Column("calling_ae", String(16)),
    Column("called_ae", String(16)),
    Column("remote_address", String(64)),
    Column("received_by", String(200)),
    Column("source_path", Text),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Index(None, "series_pk"),
    Index(None, "blob_key"),
)

# Kept apart from `instance` so series scans never read the JSON; zlib-compressed DICOM JSON.
instance_metadata = Table(
    "instance_metadata",
    metadata,
    Column("instance_pk", PK, ForeignKey("instance.pk"), primary_key=True),
    Column("series_pk", PK, nullable=False),
    Column("json_z", LargeBinary, nullable=False),
    Index(None, "series_pk"),
)

change_feed = Table(
    "change_feed",
    metadata,
    Column("seq", PK, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("trust_code", String(16)),
    Column("patient_pk", PK),
    Column("study_uid", String(64)),
    Column("series_uid", String(64)),
    Column("sop_instance_uid", String(64)),
    Column("principal", String(200), nullable=False),
    Column("detail", Text),
)
