"""Tables of the index (SQLAlchemy Core). Alembic migrations create exactly these.

Patients are keyed by (issuer, local_id): the issuer is the trust that assigned the hospital
number, so the same local ID at two trusts is two patients, always.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Computed,
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
    false,
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
    # TLS client certificate the node must present (subject CN or SHA-256 fingerprint); NULL:
    # none beyond what SOLENT_DICOM_TLS_CA asks of every TLS peer.
    Column("tls_identity", String(255), nullable=True),
    # R20: the node is sent IHE Instance Availability Notifications of the studies it may see.
    Column("allow_notify", Boolean, nullable=False, default=False, server_default=false()),
    # R28: an outside source (an IEP gateway, another organisation's PACS): everything it
    # stores is held, invisible, until an identity steward reconciles it to a patient record.
    Column("outside", Boolean, nullable=False, default=False, server_default=false()),
)

# Security (issue 6): HL7 v2 senders allowed to send over MLLP, like dicom_node for DIMSE.
hl7_sender = Table(
    "hl7_sender",
    metadata,
    Column("application", String(227), primary_key=True),  # MSH-3 namespace ID, or "*"
    Column("facility", String(227), primary_key=True),  # MSH-4 namespace ID
    Column("hosts", String(1000), nullable=False),  # comma list of host names / IPs, or "*"
    Column("trust_code", String(16), ForeignKey("trust.code")),  # None: a regional system
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# R57: the RIS of a trust, told of study edits (HL7 v2 over MLLP, `solent hl7 ris add`).
hl7_destination = Table(
    "hl7_destination",
    metadata,
    Column("trust_code", String(16), ForeignKey("trust.code"), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("application", String(227), nullable=False),  # MSH-5 receiving application
    Column("facility", String(227), nullable=False),  # MSH-6 receiving facility
    Column("tls", Boolean, nullable=False, default=False),  # MLLP inside TLS (R37)
    Column("tls_ca", String(1000)),  # PEM CA file the RIS's certificate is checked against
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
    # R6: name, birth date and sex were last set by a message traced on PDS (NSTS01); an
    # untraced update (a local edit) leaves them alone (services/identity/feeds.py).
    Column("pds_demographics", Boolean, nullable=False, default=False, server_default=false()),
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

# --- Modality Performed Procedure Steps (R17): what modalities report doing and having done --
performed_step = Table(
    "performed_step",
    metadata,
    Column("sop_instance_uid", String(64), primary_key=True),  # the MPPS instance (N-CREATE)
    Column("status", String(16), nullable=False),  # IN PROGRESS | COMPLETED | DISCONTINUED
    Column("trust_code", String(16), ForeignKey("trust.code"), nullable=False),
    Column("calling_ae", String(16), nullable=False),
    Column("patient_id", String(64)),
    Column("study_uid", String(64)),
    Column("accession_number", String(16)),
    Column("modality", String(16)),
    Column("performed_step_id", String(16)),
    Column("description", String(64)),
    Column("dataset", Text, nullable=False),  # DICOM JSON of the step as last set
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index(None, "study_uid"),
    Index(None, "trust_code", "updated_at"),
)

# --- Orders: scheduled procedure steps served by the Modality Worklist (issue 3) ---------------
# Filled by the HL7 ORM/OMI handler (and `solent worklist add`). One row per order, keyed by its
# accession number and the issuer of that number (the trust's RIS); columns are named after the
# DICOM attributes the worklist returns.
orders = Table(
    "orders",
    metadata,
    Column("accession_number", String(16), primary_key=True),
    Column("accession_issuer", String(64), primary_key=True),
    Column("patient_issuer", String(16), ForeignKey("trust.code"), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("patient_name", String(324)),
    Column("patient_birth_date", String(8)),
    Column("patient_sex", String(16)),
    Column("nhs_number", String(10)),
    Column("study_instance_uid", String(64), nullable=False),
    Column("requested_procedure_id", String(16)),
    Column("requested_procedure_description", String(64)),
    Column("referring_physician", String(324)),
    Column("modality", String(16), nullable=False),
    Column("scheduled_station_ae_title", String(16)),
    Column("scheduled_station_name", String(16)),
    Column("scheduled_start_date", String(8), nullable=False),
    Column("scheduled_start_time", String(16)),
    Column("scheduled_procedure_step_id", String(16)),
    Column("scheduled_procedure_step_description", String(64)),
    Column("scheduled_performing_physician", String(324)),
    # SCHEDULED | ARRIVED | READY | STARTED | COMPLETED | DISCONTINUED (PS3.3 C.4.10)
    Column("status", String(16), nullable=False, default="SCHEDULED"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index(None, "scheduled_start_date"),
    Index(None, "modality"),
    Index(None, "patient_issuer", "patient_id"),
)
# --- end orders -----------------------------------------------------------------------------

# -- security and audit (issue 6) --------------------------------------------------------------
# Users log in with argon2-hashed passwords (or arrive with an OIDC token and have no row);
# `other_trusts` lists further organisations the user holds a role at, besides `trust_code`.

app_user = Table(
    "app_user",
    metadata,
    Column("name", String(64), primary_key=True),
    # NULL: a regional administrator (pacs_admin of no trust, created through the CLI only).
    Column("trust_code", String(16), ForeignKey("trust.code"), nullable=True),
    Column("other_trusts", String(200), nullable=False, default=""),  # comma list
    Column("roles", String(200), nullable=False),  # comma list
    Column("password_hash", Text),  # NULL: service account, API tokens only
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Bumped by a password change or "log out everywhere": bearer tokens carry the value they
    # were issued under, so older ones stop working (revision 0002).
    Column("session_epoch", Integer, nullable=False, default=0, server_default="0"),
    # National RBAC roles assigned to a local account (R33, revision 0026): a JSON list of
    # {"org", "job_role", "activities"}; NULL: none.
    Column("national_roles", Text, nullable=True),
)

# Service API tokens: only the SHA-256 of the token is stored.
api_token = Table(
    "api_token",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("user_name", String(64), ForeignKey("app_user.name"), nullable=False),
    Column("label", String(200)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked", Boolean, nullable=False, default=False),
)

# Break-glass: time-limited access of one user to one patient record, reviewed afterwards.
break_glass = Table(
    "break_glass",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("user_name", String(200), nullable=False),
    Column("user_trust", String(16)),
    Column("patient_pk", PK, ForeignKey("patient.pk"), nullable=False),
    Column("reason_code", String(40), nullable=False),
    Column("reason_text", Text, nullable=False),
    Column("granted_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("reviewed_at", DateTime(timezone=True)),
    Column("reviewed_by", String(200)),
    Column("review_note", Text),
    Index(None, "user_name", "patient_pk"),
)

# Append-only, hash-chained audit trail; `audit_head` holds the last seq and hash so a deleted
# tail is detected too, and its row lock serialises appends on PostgreSQL.
audit_log = Table(
    "audit_log",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
    ),
    Column("at", String(32), nullable=False),  # ISO 8601 UTC, hashed as written
    Column("action", String(40), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("actor_kind", String(16), nullable=False),
    Column("actor_name", String(200), nullable=False),
    Column("actor_trust", String(16)),
    Column("actor_roles", String(200), nullable=False, default=""),
    Column("actor_address", String(64)),
    Column("patient_issuer", String(16)),
    Column("patient_id", String(64)),
    Column("nhs_number", String(10)),
    Column("study_uid", String(64)),
    Column("purpose", String(200)),
    Column("detail", Text),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index(None, "patient_issuer", "patient_id"),
    Index(None, "nhs_number"),
    Index(None, "actor_name"),
    Index(None, "study_uid"),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    # Fingerprint of the HMAC key that seals the chain (the key itself lives outside the index),
    # so a node started with another key refuses to append instead of forking the chain (0002).
    Column("key_id", String(32)),
    # R38: records up to base_seq were purged (`solent audit purge`); the chain continues from
    # base_hash, the hash of record base_seq, and base_mac (HMAC under the audit key) proves
    # that checkpoint was not moved by someone without the key. NULL: nothing purged.
    Column("base_seq", BigInteger),
    Column("base_hash", String(64)),
    Column("base_mac", String(64)),
)

# --- Regional identity and HL7 (issue 5) -----------------------------------------------------
# Records of one person across trusts are linked, never merged: an NHS-number link is derived
# (same valid, verified number and agreeing DOB/sex); `patient_link` holds explicit decisions
# (A24/admin link = "linked", A37/admin unlink = "unlinked", which also blocks the derived link).
patient_link = Table(
    "patient_link",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("patient_a", PK, ForeignKey("patient.pk"), nullable=False),  # the smaller pk
    Column("patient_b", PK, ForeignKey("patient.pk"), nullable=False),
    Column("status", String(16), nullable=False),  # linked | unlinked
    Column("source", String(40), nullable=False),  # hl7:A24 | hl7:A37 | admin
    Column("updated_by", String(200), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("patient_a", "patient_b"),
    Index(None, "patient_b"),
)

# Identifiers that no longer name a live record (A40 merged away, A47 renumbered): still
# searchable, resolving to the record that carries the studies now.
retired_identifier = Table(
    "retired_identifier",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("issuer", String(16), nullable=False),
    Column("local_id", String(64), nullable=False),
    Column("patient_pk", PK, ForeignKey("patient.pk"), nullable=False),
    Column("reason", String(16), nullable=False),  # merge | renumber
    Column("retired_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("issuer", "local_id"),
    Index(None, "patient_pk"),
)

# Contact details and registration from the trust's PAS (ADT); kept apart from `patient` so
# that table stays what DICOM says.
patient_contact = Table(
    "patient_contact",
    metadata,
    Column("patient_pk", PK, ForeignKey("patient.pk"), primary_key=True),
    Column("address", Text),
    Column("phone", String(200)),
    Column("gp_practice", String(200)),
    Column("gp", String(200)),
    Column("nhs_number_status", String(8)),  # NSTS01..NSTS08 as received (PID-32)
    Column("sensitive", Boolean, nullable=False, default=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # R42 retention inputs from ADT: PID-29 date of death, and the latest visit (A01/A03/A04).
    Column("death_date", String(8)),
    Column("last_visit", String(8)),
)

# R58: relationships that are never a link or a merge (a baby and its mother, PID-21): the
# record's trust says so; the related record is named by its identifier, resolved on read.
patient_relation = Table(
    "patient_relation",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("patient_pk", PK, ForeignKey("patient.pk"), nullable=False),
    Column("relationship", String(16), nullable=False),  # mother
    Column("related_issuer", String(16), nullable=False),
    Column("related_local_id", String(64), nullable=False),
    Column("source", String(40), nullable=False),  # hl7:PID-21
    Column("updated_by", String(200), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("patient_pk", "relationship"),
    Index(None, "related_issuer", "related_local_id"),
)

# Who changed which identity, when, through which message, with before/after (JSON).
identity_event = Table(
    "identity_event",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("patient_pk", PK),
    Column("other_patient_pk", PK),
    Column("issuer", String(16)),
    Column("local_id", String(64)),
    Column("actor", String(200), nullable=False),
    Column("message_pk", PK),
    Column("before", Text),
    Column("after", Text),
    Column("reverses", PK),
    Column("reversed_by", PK),
    Index(None, "patient_pk"),
    Index(None, "other_patient_pk"),
    Index(None, "issuer", "local_id"),
)

# Every HL7 v2 message as received, persisted before it is acknowledged.
hl7_message = Table(
    "hl7_message",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("sender", String(120)),  # MSH-3^MSH-4
    Column("control_id", String(64)),  # MSH-10; unique per sender
    Column("message_type", String(32)),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("remote_address", String(64)),
    Column("raw", Text, nullable=False),
    Column("status", String(16), nullable=False),  # received | applied | rejected | held
    Column("ack_code", String(2)),
    Column("detail", Text),
    Column("processed_at", DateTime(timezone=True)),
    UniqueConstraint("sender", "control_id"),
    Index(None, "status"),
)

# Order context beyond the worklist columns of `orders` (same key).
order_context = Table(
    "order_context",
    metadata,
    Column("accession_number", String(16), primary_key=True),
    Column("accession_issuer", String(64), primary_key=True),
    Column("placer_order", String(64)),
    Column("filler_order", String(64)),
    Column("order_control", String(4)),
    Column("order_status", String(4)),
    Column("procedure_code", String(64)),
    Column("procedure_coding_system", String(32)),
    Column("clinical_details", Text),
    Column("message_pk", PK),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # R19: the received code (above) mapped by the consortium's table when the order was filed.
    Column("nicip_code", String(16)),
    Column("snomed_code", String(18)),
    Column("body_region", String(32)),
)

# R19: a study's procedure code as received (the order's OBR-4, the DICOM Requested / Procedure
# Code Sequence, or its Study Description as the fallback) and what the mapping table made of it.
study_procedure = Table(
    "study_procedure",
    metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("source", String(16), nullable=False),  # order | requested | performed | description
    Column("code", String(64)),
    Column("coding_system", String(32)),
    Column("meaning", String(200)),
    Column("nicip_code", String(16)),
    Column("snomed_code", String(18)),
    Column("body_region", String(32)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Reports from ORU^R01, keyed like orders by (accession, issuer); matched to a study when read,
# so a report that arrived before its images is never lost (unmatched queue).
report = Table(
    "report",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("accession_number", String(16), nullable=False),
    Column("accession_issuer", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", String(4), nullable=False),  # OBR-25: P | F | C | X ...
    Column("superseded", Boolean, nullable=False, default=False),
    Column("patient_issuer", String(16)),
    Column("patient_id", String(64)),
    Column("procedure", String(200)),
    Column("text", Text, nullable=False),
    Column("interpreter", String(200)),
    # OBR-32's ID component (the RIS user code of the principal result interpreter): whom an
    # MDT discrepancy with this report is addressed to (R32, revision 0023).
    Column("interpreter_id", String(64)),
    Column("observed_at", String(26)),
    Column("message_pk", PK),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("accession_number", "accession_issuer", "version"),
)

# Work items for people: identity conflicts, rejected merges, held messages.
data_quality = Table(
    "data_quality",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("status", String(16), nullable=False, default="open"),  # open | resolved
    Column("issuer", String(16)),
    Column("local_id", String(64)),
    Column("patient_pk", PK),
    Column("nhs_number", String(10)),
    Column("detail", Text, nullable=False),
    Column("message_pk", PK),
    Column("resolved_by", String(200)),
    Column("resolved_at", DateTime(timezone=True)),
    Index(None, "status"),
    Index(None, "patient_pk"),
)
# --- end regional identity and HL7 ------------------------------------------------------------
# Instances held for identity reconciliation (issue 11): sent over the network naming a study
# or series already filed under a patient record the sender may not see. Kept in the blob store
# under a key of their own (``path``), filed under no patient; a regional work-queue item
# (``work_item``) asks a person to decide. Never served, never counted.
held_instance = Table(
    "held_instance",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("sop_uid", String(64), nullable=False),
    Column("series_uid", String(64)),
    Column("study_uid", String(64)),
    Column("sha256", String(64), nullable=False),
    Column("path", Text, nullable=False),  # blob key of the kept copy
    Column("sender", String(200), nullable=False),  # who sent it (Principal.describe())
    Column("sender_trust", String(16)),
    Column("patient_issuer", String(16)),  # the record the instance names, as sent
    Column("patient_id", String(64)),
    Column("holder_pk", PK),  # the record the study/series is filed under
    Column("reason", Text, nullable=False),
    Column("work_item", PK),
    Column("status", String(16), nullable=False),  # held | released | discarded
    # Revision 0013: the person's decision (release or discard), and the sender's AE title.
    Column("calling_ae", String(16)),
    Column("resolved_by", String(200)),
    Column("resolved_at", DateTime(timezone=True)),
    Column("resolution", Text),  # discard: the reason given; release: where it was filed
    # Revision 0022 (R28): "outside" for a study imported from another organisation (IEP, a
    # PDI disc, another PACS), held until reconciled; NULL for a UID conflict (issue 11). The
    # identity and study the instance carried, as sent, for the steward who reconciles it.
    Column("kind", String(16)),
    Column("original_issuer", String(64)),
    Column("patient_name", String(324)),
    Column("patient_birth_date", String(8)),
    Column("patient_sex", String(16)),
    Column("study_date", String(8)),
    Column("study_description", String(64)),
    Column("accession_number", String(16)),
    Column("modality", String(16)),
    UniqueConstraint("sop_uid", "sha256"),
    Index(None, "status"),
    Index(None, "study_uid"),
)

# IOCM (R56): instances withdrawn by a rejection note (a KOS titled 113001/113037/113038/
# 113039). Their rows leave the query tables (nothing finds or retrieves them); the blob stays,
# named here, as the policy keeps it; a re-send of the same SOP Instance UID is refused.
rejected_instance = Table(
    "rejected_instance",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("sop_uid", String(64), nullable=False, unique=True),
    Column("series_uid", String(64), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("blob_key", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("patient_issuer", String(16)),
    Column("patient_id", String(64)),
    Column("code", String(16), nullable=False),  # the note's title (CID 7011)
    Column("note_uid", String(64), nullable=False),  # the rejection note's SOP Instance UID
    Column("rejected_by", String(200), nullable=False),
    Column("sop_class_uid", String(64)),  # NULL for rows before revision 0016
    Index(None, "study_uid"),
)

# R57: corrections of studies filed under the wrong patient or order. One row per edit: a
# study moved to another patient record (``move``), one series of it (``move-series``, into a
# study of its own or one of the target record's) or its accession number corrected
# (``accession``). A move between records of two issuers waits (``requested``) for a second,
# different person; ``done`` edits are what outgoing DICOM reports in Original Attributes
# Sequence and what lets a late instance naming the old record follow the study. Patient
# records are named by pk and by (issuer, local ID) as they were, so the row outlives a merge.
study_edit = Table(
    "study_edit",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    # move | move-series | split | merge | accession
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # requested | done | refused
    Column("study_uid", String(64), nullable=False),
    # move-series: the series, and the study it goes to (made for it, or the target's own)
    Column("series_uid", String(64)),
    Column("new_study_uid", String(64)),
    Column("from_patient_pk", PK),
    Column("from_issuer", String(16)),
    Column("from_local_id", String(64)),
    Column("to_patient_pk", PK),
    Column("to_issuer", String(16)),
    Column("to_local_id", String(64)),
    Column("old_accession", String(16)),
    Column("old_accession_issuer", String(64)),
    Column("new_accession", String(16)),
    Column("new_accession_issuer", String(64)),
    Column("reason", Text, nullable=False),
    Column("reverses", PK),  # the edit this one undoes
    Column("reversed_by", PK),  # the edit that undid this one
    Column("requested_by", String(200), nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("decided_by", String(200)),
    Column("decided_at", DateTime(timezone=True)),
    # merge: the emptied study's attributes (JSON), so a reversal brings it back as it was
    Column("study_attrs", Text),
    Index(None, "study_uid"),
    Index(None, "new_study_uid"),
    Index(None, "status"),
)

# The series a split or merge moved (from study_uid to new_study_uid), one row each: a late
# instance of one still lands where it went, and a reversal moves the same ones back.
study_edit_series = Table(
    "study_edit_series",
    metadata,
    Column("edit_pk", PK, ForeignKey("study_edit.pk"), primary_key=True),
    Column("series_uid", String(64), primary_key=True),
    Index(None, "series_uid"),
)

# R43: legal holds (inquiries, litigation, complaints). While an unlifted hold covers a study,
# a retention deletion (IOCM 113039) withdraws nothing of it. One row per target: a study, a
# patient record (issuer, local ID) or a person (NHS number, every trust's records); a cohort is
# several rows placed together under one reference. Lifting keeps the row (who, when, why).
legal_hold = Table(
    "legal_hold",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("kind", String(8), nullable=False),  # study | patient | nhs
    Column("study_uid", String(64)),
    Column("issuer", String(16)),
    Column("patient_id", String(64)),
    Column("nhs_number", String(10)),
    Column("reason", Text, nullable=False),
    Column("reference", String(200), nullable=False),  # inquiry, case or complaint reference
    Column("placed_by", String(200), nullable=False),
    Column("placed_trust", String(16)),  # the placer's trust: whose records managers see it
    Column("placed_at", DateTime(timezone=True), nullable=False),
    Column("lifted_by", String(200)),
    Column("lifted_at", DateTime(timezone=True)),
    Column("lift_reason", Text),
    Index(None, "study_uid"),
    Index(None, "issuer", "patient_id"),
    Index(None, "nhs_number"),
)

# R44: a retention deletion (an IOCM note titled 113039) waits here for a second person's
# approval; approval withdraws what it lists (``rejected_instance`` rows are the destruction
# record), refusal withdraws nothing. Either way the row stays as the record of the decision.
retention_deletion = Table(
    "retention_deletion",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("note_uid", String(64), nullable=False, unique=True),
    Column("code", String(16), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("patient_issuer", String(16)),
    Column("patient_id", String(64)),
    Column("requested_by", String(200), nullable=False),  # Principal.describe()
    Column("requester_user", String(200)),  # the person's user name, NULL for a node
    Column("refs", Text, nullable=False),  # JSON [[series UID, SOP Instance UID], ...]
    Column("status", String(16), nullable=False),  # pending | approved | refused
    Column("decided_by", String(200)),
    Column("decided_at", DateTime(timezone=True)),
    Column("decision_note", Text),
    Column("outcome", Text),  # JSON: what approval withdrew, kept under hold, did not find
    Index(None, "status"),
)

# R42: a pathway flag (cancer, transplant, CJD, maternity, screening, clinical trial) a records
# manager sets on a study or on a patient record (then on every study of that person, at every
# trust); it only lengthens retention. Removal keeps the row (who, when, why).
retention_flag = Table(
    "retention_flag",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("study_uid", String(64)),
    Column("issuer", String(16)),
    Column("patient_id", String(64)),
    Column("since", String(8)),  # YYYYMMDD the period counts from (diagnosis...), or NULL
    Column("note", Text, nullable=False),
    Column("set_by", String(200), nullable=False),
    Column("set_trust", String(16)),
    Column("set_at", DateTime(timezone=True), nullable=False),
    Column("removed_by", String(200)),
    Column("removed_at", DateTime(timezone=True)),
    Column("remove_reason", Text),
    Index(None, "study_uid"),
    Index(None, "issuer", "patient_id"),
)

# R30: what each stored key object selection (not a rejection note) and presentation state
# references, so one whose images a rejection note withdraws is flagged to whoever stored it.
key_object_reference = Table(
    "key_object_reference",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("object_sop_uid", String(64), nullable=False),
    Column("object_series_uid", String(64), nullable=False),
    Column("object_study_uid", String(64), nullable=False),
    Column("kind", String(2), nullable=False),  # KO or PR
    Column("title", String(200), nullable=False),
    Column("stored_by", String(200), nullable=False),  # Principal.describe() of the sender
    Column("ref_study_uid", String(64), nullable=False),
    Column("ref_series_uid", String(64), nullable=False),
    Column("ref_sop_uid", String(64), nullable=False),
    Index(None, "object_sop_uid"),
    Index(None, "object_study_uid"),
    Index(None, "ref_sop_uid"),
    Index(None, "stored_by"),
)

# --- Query engine (issues 3/4): what the C-FIND / QIDO-RS compiler (index/query.py) relies on.
# Studies come newest first, undated ones last, on both backends: ORDER BY study_date_key DESC,
# pk DESC walks this index backwards (a generated column, because Alembic cannot autogenerate
# expression indexes and PostgreSQL sorts NULLs first in DESC order).
study.append_column(
    Column("study_date_key", String(8), Computed("coalesce(study_date, '')", persisted=True))
)
Index("ix_study_date_key_pk", study.c.study_date_key, study.c.pk)
# The access rule asks, per candidate record, "has it a study at the caller's trust?": answered
# from this index alone (revision 0006, issue 16).
Index("ix_study_patient_pk_trust_code", study.c.patient_pk, study.c.trust_code)
# --- end query engine -------------------------------------------------------------------------

# --- Legacy PACS migration (issue 13): sources, inventory and per-instance transfer state. ----
# The state lives here, not in a process, so a killed `solent migrate run` resumes where it
# stopped; a row per (source, SOP Instance UID) is also the provenance of every copy received.
migration_source = Table(
    "migration_source",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # dimse | dicomweb | folder
    Column("address", Text, nullable=False),  # AE@host:port | base URL | folder path
    Column("trust_code", String(16), ForeignKey("trust.code"), nullable=False),
    Column("nhs_traced", Boolean, nullable=False),  # its NHS numbers were traced on PDS
    Column("calling_ae", String(16), nullable=False),
    Column("associations", Integer, nullable=False),
    Column("rate", Integer, nullable=False),  # instances per second, 0 = unthrottled
    Column("hours", String(11)),  # "HH:MM-HH:MM" window, NULL = any time
    Column("created_at", DateTime(timezone=True), nullable=False),
)

migration_item = Table(
    "migration_item",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("source", String(64), ForeignKey("migration_source.name"), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("patient_name", String(200)),
    Column("birth_date", String(8)),
    Column("sex", String(16)),
    Column("nhs_number", String(16)),
    Column("study_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False),
    Column("sop_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64)),
    Column("study_date", String(8)),
    Column("modality", String(16)),
    Column("size_bytes", BigInteger),
    Column("locator", Text),  # folder: the file path; others: empty (UIDs suffice)
    # pending | waiting | conflict | stored | duplicate | quarantined | failed
    Column("state", String(16), nullable=False),
    Column("reason", Text),
    Column("source_sha256", String(64)),  # of the bytes received from this source
    Column("seen_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("source", "sop_uid"),
    Index(None, "source", "state"),
    Index(None, "study_uid"),
)

# Demographics last reconciled per source patient: a delta run re-reconciles only changes.
migration_patient = Table(
    "migration_patient",
    metadata,
    Column("source", String(64), ForeignKey("migration_source.name"), primary_key=True),
    Column("patient_id", String(64), primary_key=True),
    Column("demographics", Text, nullable=False),  # JSON of what was applied
    Column("patient_pk", PK),
    # True when migration created the record (it may then update it); False for the trust's
    # own record (PAS/HL7), which legacy data never overwrites.
    Column("owns_record", Boolean, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Same SOP Instance UID, different content: both versions kept, a person decides.
migration_quarantine = Table(
    "migration_quarantine",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("source", String(64), ForeignKey("migration_source.name"), nullable=False),
    Column("sop_uid", String(64), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("archive_sha256", String(64), nullable=False),
    Column("source_sha256", String(64), nullable=False),
    Column("path", Text, nullable=False),  # where the quarantined copy is kept
    Column("status", String(16), nullable=False),  # open | resolved
    Column("at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("source", "sop_uid", "source_sha256"),
)
# --- end legacy PACS migration ----------------------------------------------------------------
# --- Regional scale (issue 16): background work that follows the change feed ------------------
# How far each consumer of the change feed has turned events into jobs. The dispatcher locks the
# row, enqueues the jobs of the next events and advances it in one transaction, so each event
# becomes its jobs exactly once whatever the number of nodes.
feed_cursor = Table(
    "feed_cursor",
    metadata,
    Column("consumer", String(64), primary_key=True),
    Column("seq", PK, nullable=False),
)
# Jobs of the in-process queue (SQLite) that used all their attempts: kept for an operator, as
# procrastinate keeps its failed jobs on PostgreSQL (`solent jobs list --status failed`, `solent
# jobs retry`). Written in the transaction that moves the consumer's cursor past the job's
# event, so a failure is never lost. status: failed -> todo (retry asked) -> doing -> succeeded
# or failed again. ``worker`` (host:pid) runs it while "doing"; ``seq`` is the event it came
# from. ``last_error`` is the exception's first line, cut short.
failed_job = Table(
    "failed_job",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("consumer", String(64), nullable=False),
    Column("seq", PK, nullable=False),
    Column("task", String(64), nullable=False),
    Column("args", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text, nullable=False),
    Column("first_failed_at", DateTime(timezone=True), nullable=False),
    Column("last_failed_at", DateTime(timezone=True), nullable=False),
    Column("worker", String(200)),
    Column("done_at", DateTime(timezone=True)),
    Index(None, "status", "consumer"),
)
# One row per fixity check of a stored blob (the `verify_blob` job): the bytes in the store
# still hash to the digest recorded at ingest. Appended, never updated, so a job run twice
# would show as two rows.
blob_check = Table(
    "blob_check",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("blob_key", String(200), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("detail", Text, nullable=False),
    Column("worker", String(200), nullable=False),
    Index(None, "sop_instance_uid"),
)
# The trusts that may see each patient record by the access rule (index/access.py), break-glass
# aside. PostgreSQL only: triggers keep it (migration 0009); SQLite evaluates the rule instead.
patient_visibility = Table(
    "patient_visibility",
    metadata,
    Column("patient_pk", PK, primary_key=True),
    Column("trust_code", String(16), primary_key=True),
)
# --- end regional scale -----------------------------------------------------------------------
# --- Viewer and MDT meetings (issue 12) -------------------------------------------------------
# Key images a user marked in a study (kept by UID: the instance may arrive after the mark).
key_image = Table(
    "key_image",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("study_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False),
    Column("sop_uid", String(64), nullable=False),
    Column("frame", Integer, nullable=False),
    Column("note", Text, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index(None, "study_uid"),
)

# The patients a user opened last (the viewer's "recent patients").
viewer_recent = Table(
    "viewer_recent",
    metadata,
    Column("user_name", String(200), primary_key=True),
    Column("patient_issuer", String(16), primary_key=True),
    Column("patient_id", String(64), primary_key=True),
    Column("opened_at", DateTime(timezone=True), nullable=False),
)

# An MDT meeting; prefetch progress is stored so every node (and the meeting JSON) shows it.
mdt_meeting = Table(
    "mdt_meeting",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("title", String(200), nullable=False),
    Column("date", String(10), nullable=False),
    Column("team", String(200), nullable=False),
    Column("coordinator", String(200), nullable=False),
    Column("presenter", String(200)),
    # The presenter's latest view event (JSON), for a node that opens the room later (0007).
    Column("live_view", Text),
    # The number of the room's last presenter/view event: one order across nodes (0008).
    Column("live_seq", Integer, nullable=False, server_default="0"),
    Column("prefetch_state", String(16), nullable=False, default="pending"),
    Column("prefetch_done", Integer, nullable=False, default=0),
    Column("prefetch_total", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Start time HH:MM (server's local time), the URL base metadata was warmed under, and
    # when the last prefetch ended: the warming shortly before the start is due (0011).
    Column("time", String(5)),
    Column("prefetch_base", String(500)),
    Column("prefetched_at", DateTime(timezone=True)),
    Index(None, "date"),
)

# One patient of a meeting, in order, with the studies to show and the outcome noted.
mdt_item = Table(
    "mdt_item",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("meeting_pk", PK, ForeignKey("mdt_meeting.pk"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("patient_issuer", String(16), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("study_uids", Text, nullable=False),  # JSON list
    Column("outcome", Text),
    Column("outcome_by", String(200)),
    Column("outcome_at", DateTime(timezone=True)),
    Column("prefetch_state", String(16)),  # pending/running/done/failed/not available (0011)
    Column("prefetch_warmed", Integer),  # resources warmed by the last prefetch
    Index(None, "meeting_pk"),
)

# R32: the radiology input to an MDT, recorded against the studies (and series) reviewed. One
# row per recording, never changed: a later recording for the item supersedes it in the view.
mdt_outcome = Table(
    "mdt_outcome",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("meeting_pk", PK, ForeignKey("mdt_meeting.pk"), nullable=False),
    Column("item_pk", PK, ForeignKey("mdt_item.pk"), nullable=False),
    Column("patient_issuer", String(16), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("opinion", Text, nullable=False),
    Column("plan", Text, nullable=False),
    Column("discrepancy", Boolean, nullable=False, default=False),
    Column("discrepancy_note", Text),
    Column("recorded_by", String(200), nullable=False),
    Column("recorded_trust", String(16)),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Index(None, "item_pk"),
)

# R32: a study an MDT outcome reviewed (and which of its series; none listed: the whole study),
# so the study's viewers find the outcomes recorded against it.
mdt_outcome_study = Table(
    "mdt_outcome_study",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("outcome_pk", PK, ForeignKey("mdt_outcome.pk"), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("series_uids", Text, nullable=False),  # JSON list
    Index(None, "study_uid"),
    Index(None, "outcome_pk"),
)

# R32: a discrepancy between an MDT opinion and a study's report, addressed to the report's
# primary reporter (OBR-32) at the trust that reported it, until they acknowledge it.
reporter_notice = Table(
    "reporter_notice",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("outcome_pk", PK, ForeignKey("mdt_outcome.pk"), nullable=False),
    Column("trust", String(16), nullable=False),  # the reporting trust (accession issuer)
    Column("reporter_id", String(64)),  # OBR-32 ID, lower case; NULL: the trust's radiologists
    Column("reporter_name", String(200)),
    Column("study_uid", String(64), nullable=False),
    Column("accession_number", String(16), nullable=False),
    Column("report_version", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),  # open | acknowledged
    Column("acknowledged_by", String(200)),
    Column("acknowledged_at", DateTime(timezone=True)),
    Column("response", Text),
    Index(None, "trust", "status"),
)
# --- end viewer and MDT meetings --------------------------------------------------------------
