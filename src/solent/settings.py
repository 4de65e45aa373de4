"""One typed settings object, read from ``SOLENT_*`` variables and an optional TOML file.

Built once at start-up and passed down; nothing else reads the environment. Unknown
``SOLENT_*`` variables and unknown TOML keys are errors, because a typo in a setting of a
PACS (say, the storage URL) must not silently fall back to a default.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from solent.errors import ConfigurationError

ENV_PREFIX = "SOLENT_"


class Settings(BaseSettings):
    """Every setting of a Solent node. Each field is documented in docs/configuration.md."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    data_dir: Path = Field(Path("./var"), description="Where the embedded database and blobs live.")
    database_url: str = Field(
        "", description="SQLAlchemy URL of the index; default: SQLite file solent.db in data_dir."
    )
    storage_url: str = Field(
        "", description="Blob store: file:///path or s3://bucket/prefix; default: data_dir/blobs."
    )
    s3_endpoint_url: str = Field(
        "", description="S3-compatible endpoint, e.g. http://127.0.0.1:9000."
    )
    s3_region: str = Field("us-east-1", description="Region name sent to the S3 endpoint.")
    s3_access_key_id: str = Field("", description="S3 access key id (or use the AWS_* variables).")
    s3_secret_access_key: SecretStr = Field(
        SecretStr(""), description="S3 secret access key; never logged."
    )
    s3_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description="How long one S3 request may wait to connect, or for the endpoint's next "
        "bytes, before it is tried again (3 tries in all); then the operation fails as "
        "storage unavailable (C-STORE A700, HTTP 503) instead of hanging.",
    )
    bind_address: str = Field("127.0.0.1", description="Address every listener binds to.")
    http_port: int = Field(8042, ge=0, le=65535, description="HTTP port; 0 picks a free port.")
    # --- HTTP limits (issue 11) ---
    http_max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        le=1024**2,
        description="Largest HTTP request line plus headers in bytes (431 beyond).",
    )
    http_header_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="A connection that has not sent a complete request head this long after "
        "opening (or after its previous response) is closed.",
    )
    http_stall_timeout_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="A connection whose request body stops arriving, or whose response the "
        "client stops reading, for this long is closed.",
    )
    http_max_connections: int = Field(
        1000,
        ge=1,
        le=100000,
        description="Most simultaneous HTTP connections (and requests in progress) per "
        "process; beyond it requests are answered 503.",
    )
    # --- end HTTP limits ---
    # --- HTTPS (issue 6) ---
    http_tls_cert: Path | None = Field(
        None, description="PEM certificate (chain) of the HTTP port; with the key, HTTPS only."
    )
    http_tls_key: Path | None = Field(None, description="PEM private key of the HTTP port.")
    # --- end HTTPS ---
    dicom_port: int = Field(11112, ge=0, le=65535, description="DICOM port; 0 picks a free port.")
    ae_title: str = Field("SOLENT", description="Our DICOM Application Entity title.")
    # --- DIMSE (issue 3) ---------------------------------------------------------------
    dicom_allow_unknown: bool = Field(
        False,
        description="Development only: let unregistered AE titles associate and do anything; "
        "what they store goes to dicom_unknown_trust (empty: their C-STOREs are refused).",
    )
    dicom_unknown_trust: str = Field(
        "", description="Trust of instances sent by unregistered nodes when dicom_allow_unknown."
    )
    dicom_accept_unknown_sop_classes: bool = Field(
        False, description="Accept C-STORE of private/unknown SOP classes (any storage syntax)."
    )
    dicom_max_find_results: int = Field(
        1000, ge=1, description="Cap on C-FIND matches; beyond it the query fails with A700."
    )
    dicom_max_associations: int = Field(
        32,
        ge=1,
        le=1000,
        description="Most simultaneous DICOM associations per receiving process; more are "
        "rejected (A-ASSOCIATE-RJ, transient: local limit exceeded).",
    )
    dicom_max_pending_connections: int = Field(
        256,
        ge=1,
        le=100000,
        description="Most connections per receiving process that have not sent an "
        "A-ASSOCIATE-RQ yet; beyond it the oldest is closed. They never take association slots.",
    )
    dicom_artim_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=600,
        description="ARTIM timer (PS3.8 9.1.5): a connection without an A-ASSOCIATE-RQ after "
        "this long is closed.",
    )
    dicom_workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Processes receiving on the DICOM port (sharing its listening socket), the "
        "first being `solent serve` itself; 0: one per CPU. Associations go round them.",
    )
    http_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes answering on the HTTP port, the first being `solent serve` "
        "itself (PostgreSQL only; SQLite keeps one). Each runs the HTTP app on its own "
        "connection pool; DIMSE, HL7 and background jobs stay in the first.",
    )
    dicom_tls_port: int = Field(
        -1, ge=-1, le=65535, description="DICOM TLS port; -1 disables TLS, 0 picks a free port."
    )
    dicom_tls_cert: Path | None = Field(None, description="PEM certificate of the TLS port.")
    dicom_tls_key: Path | None = Field(None, description="PEM private key of the TLS port.")
    dicom_tls_ca: Path | None = Field(
        None, description="PEM CA bundle; when set, peers must present a certificate it signs."
    )
    dicom_engine: Literal["fast", "pynetdicom"] = Field(
        "fast",
        description="Upper layer of the plain DICOM port: `fast` (Solent's own, for C-ECHO, "
        "C-STORE and C-GET; other services handed to pynetdicom) or `pynetdicom` for all. "
        "The TLS port always uses pynetdicom.",
    )
    # --- end DIMSE ------------------------------------------------------------------------
    hl7_port: int = Field(
        2575, ge=0, le=65535, description="HL7 v2 MLLP port; 0 picks a free port."
    )
    # --- regional identity (issue 5) ---
    hl7_link_senders: str = Field(
        "ZZX",
        description=(
            "Comma list of MSH-4 facilities besides registered trusts (the consortium EMPI) "
            "allowed to send ADT^A24/A37 link and unlink messages."
        ),
    )
    # --- end regional identity ---
    hl7_max_connections: int = Field(
        64,
        ge=1,
        le=10000,
        description="Most simultaneous HL7 MLLP connections; more are closed at once.",
    )
    hl7_tls_port: int = Field(
        -1,
        ge=-1,
        le=65535,
        description="HL7 v2 MLLP over TLS port (R37: HL7 from trusts across a network); -1 "
        "disables it, 0 picks a free port. Same senders and rules as the plain port.",
    )
    hl7_tls_cert: Path | None = Field(None, description="PEM certificate of the MLLP TLS port.")
    hl7_tls_key: Path | None = Field(None, description="PEM private key of the MLLP TLS port.")
    hl7_tls_ca: Path | None = Field(
        None,
        description="PEM CA bundle; when set, HL7 senders on the TLS port must present a "
        "certificate it signs (mutual TLS).",
    )
    hl7_idle_timeout_seconds: float = Field(
        600.0,
        gt=0,
        le=86400,
        description="An MLLP connection that sends nothing for this long is closed.",
    )
    hl7_allow_unknown_senders: bool = Field(
        False,
        description="Development only: accept HL7 from senders not registered with "
        "`solent hl7 sender add` (MSH-4 must still be a registered trust).",
    )
    log_format: Literal["text", "json"] = Field("text", description="Log line format.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_patient_data: bool = Field(
        False, description="Allow patient identifiers in logs (off: logs carry UIDs only)."
    )
    nhs_number_tag: str = Field(
        "",
        description="Extra tag (e.g. 0010,1000 or a keyword) holding the NHS number, "
        "besides Other Patient IDs Sequence with issuer NHS.",
    )
    conflict_policy: Literal["reject", "replace"] = Field(
        "reject",
        description="Same SOP Instance UID, different bytes: reject (keep the first) or replace.",
    )
    missing_patient_id_policy: Literal["placeholder", "reject"] = Field(
        "placeholder",
        description="No PatientID: file under an unidentified record per study, or reject.",
    )
    import_workers: int = Field(2, ge=1, le=64, description="Parallel workers of solent import.")
    demo_data: bool = Field(False, description="Load the synthetic demo data on first start.")
    production: bool = Field(
        False,
        description="This archive holds real patients (R2): NHS test numbers (999 000 0000-"
        "999 999 9999) go onto the data-quality work queue and never link records across "
        "trusts. Off (demo, test, training archives): test numbers count as ordinary numbers.",
    )
    # --- DICOMweb (issue 4) ------------------------------------------------------------
    stow_max_bytes: int = Field(
        4 * 1024**3, ge=1024, description="Largest STOW-RS request body in bytes (413 beyond)."
    )
    stow_default_trust: str = Field(
        "",
        description="Transitional: trust that STOW-RS files instances under when the caller's "
        "principal names none (empty: such parts fail with 0x0124 Not Authorized).",
    )
    cors_origins: str = Field(
        "",
        description="Comma-separated origins allowed to call /dicomweb from a browser "
        "(CORS), e.g. https://viewer.example.nhs.uk; * allows any; empty: none.",
    )
    dicomweb_access_cache_seconds: float = Field(
        5.0,
        ge=0,
        le=60,
        description="How long a granted DICOMweb study access decision is reused per principal "
        "and study (0: check every request); a revoked or expired grant is honoured within it.",
    )
    dicomweb_cache_mb: int = Field(
        64,
        ge=0,
        le=4096,
        description="Memory for cached DICOMweb responses (series metadata, patched headers, "
        "thumbnails) in MB; 0 disables.",
    )
    # --- end DICOMweb -------------------------------------------------------------------
    # --- security and audit (issue 6) ----------------------------------------------------
    token_ttl_minutes: int = Field(
        60, ge=1, le=24 * 60, description="Lifetime of local bearer tokens (login, token create)."
    )
    token_secret: SecretStr = Field(
        SecretStr(""),
        description="Shared HS256 key for local tokens when several nodes serve one archive; "
        "empty: an Ed25519 key generated into data_dir/security (mode 0600). Never logged.",
    )
    oidc_issuer: str = Field(
        "", description="OpenID Connect issuer whose bearer tokens are accepted (empty: off)."
    )
    oidc_audience: str = Field("", description="Audience (aud) an OIDC token must carry.")
    oidc_jwks_url: str = Field(
        "",
        description="JWKS URL of the OIDC issuer, e.g. https://idp/realms/x/certs (empty: the "
        "jwks_uri of the issuer's /.well-known/openid-configuration).",
    )
    oidc_client_id: str = Field(
        "",
        description="The viewer's client id at the OIDC issuer (a public client: authorization "
        "code + PKCE, no secret); empty: the viewer offers password sign-in only.",
    )
    oidc_authorization_endpoint: str = Field(
        "",
        description="The issuer's authorization endpoint the viewer sends a user to (empty: "
        "from the issuer's discovery document).",
    )
    oidc_token_endpoint: str = Field(
        "",
        description="The issuer's token endpoint, called by the browser (it must allow the "
        "viewer's origin: CORS; empty: from the issuer's discovery document).",
    )
    oidc_scopes: str = Field("openid profile", description="Scopes the viewer asks the issuer for.")
    oidc_userinfo_endpoint: str = Field(
        "",
        description="The issuer's userinfo endpoint, read (once a minute per token) for the "
        "national RBAC claims nhsid_nrbac_roles and selected_roleid when the bearer token "
        "carries none (NHS CIS2 access tokens; R33, needs SOLENT_RBAC_POLICY); empty: only the "
        "token's own claims are read.",
    )
    oidc_display_name: str = Field(
        "single sign-on", description="The identity provider's name on the sign-in button."
    )
    oidc_viewer_token: Literal["access_token", "id_token"] = Field(
        "access_token",
        description="Which token of the issuer's answer the viewer sends as its bearer token "
        "(it must carry SOLENT_OIDC_AUDIENCE and the trust and roles claims).",
    )
    break_glass_minutes: int = Field(
        240, ge=1, le=7 * 24 * 60, description="How long a break-glass grant lasts."
    )
    rbac_policy: Path | None = Field(
        None,
        description="The consortium's national RBAC policy (R33): a TOML file saying which "
        "activities (B-codes) grant which Solent permissions and roles, and the baseline "
        "activities of job roles (R-codes); unset: Solent roles only.",
    )
    max_body_bytes: int = Field(
        4 * 1024**3, ge=1024, description="Largest HTTP request body accepted (413 beyond)."
    )
    # --- resource limits (issue 11) ---
    deflate_max_ratio: int = Field(
        16,
        ge=1,
        le=10000,
        description="A Deflated Explicit VR Little Endian dataset may inflate to this many times "
        "its deflated size (at least 1 MiB); beyond it the instance is refused as too large.",
    )
    deflate_max_bytes: int = Field(
        512 * 1024**2,
        ge=1024**2,
        description="Absolute cap in bytes on the inflated size of a deflated dataset "
        "(the parser holds it in memory).",
    )
    # --- end resource limits ---
    max_multipart_parts: int = Field(
        10000, ge=1, description="Most parts in one multipart request, e.g. STOW-RS (413 beyond)."
    )
    max_query_results: int = Field(
        1000, ge=1, description="Most rows one query returns (API, QIDO, FHIR search)."
    )
    rate_limit_per_second: float = Field(
        500.0,
        ge=0,
        description="HTTP requests per second per principal (bursts of 2 seconds); 0: no limit.",
    )
    audit_syslog_url: str = Field(
        "",
        description="Where `solent audit export --syslog` sends DICOM audit messages: "
        "tls://host:port (RFC 5425) or udp://host:port.",
    )
    audit_syslog_ca_file: Path | None = Field(
        None, description="PEM CA bundle that signs the syslog server's certificate."
    )
    # --- tokens, audit key and login limits (issue 11) --------------------------------------
    api_token_days: int = Field(
        90, ge=1, le=3650, description="Default lifetime of service API tokens, in days."
    )
    session_max_hours: int = Field(
        12,
        ge=1,
        le=24 * 31,
        description="Absolute lifetime of a login session: refreshing a bearer token never "
        "extends it beyond this many hours after the password was checked.",
    )
    audit_key: SecretStr = Field(
        SecretStr(""),
        description="HMAC key sealing the audit chain (16+ bytes), shared by every node; "
        "empty: a random key generated into data_dir/security/audit-key (mode 0600). "
        "Never logged.",
    )
    login_failures_per_address: int = Field(
        10,
        ge=1,
        description="Failed password logins one source address may make before it waits "
        "(the allowance refills over login_failure_window_seconds).",
    )
    login_failure_window_seconds: float = Field(
        300.0, gt=0, description="Window over which the per-address failure allowance refills."
    )
    login_attempts_per_second: float = Field(
        20.0,
        gt=0,
        description="Password logins per second this node accepts overall, whatever the "
        "address (bursts of 2 seconds); beyond: 429.",
    )
    password_hash_concurrency: int = Field(
        2,
        ge=1,
        le=256,
        description="Argon2 password checks run at once per node; others wait up to 5 s, "
        "then get 503, so a login flood cannot take every CPU.",
    )
    # --- records retention (R42, R38) -------------------------------------------------------
    retention_policy: Literal["code", "rcr"] = Field(
        "code",
        description="Retention periods (R42): code = the Records Management Code of Practice "
        "minimums; rcr = also the RCR recommendation, 30 years after last contact or 10 years "
        "after death, whichever is later (never shorter than the Code).",
    )
    retention_adult_years: int = Field(
        8,
        ge=8,
        le=200,
        description="Years an adult's study is kept after their last contact with any "
        "consortium trust (R42); the Code's minimum, 8, may only be lengthened.",
    )
    audit_retention_years: int = Field(
        0,
        ge=0,
        le=200,
        description="Years audit records are kept (R38), as Information Governance sets; 0 "
        "(the default): as long as the archive, `solent audit purge` refuses to run.",
    )
    # --- end security and audit -----------------------------------------------------------
    # --- regional scale (issue 16) --------------------------------------------------------
    shutdown_drain_seconds: float = Field(
        0.0,
        ge=0,
        le=300,
        description="On SIGTERM, how long `solent serve` keeps serving with /health/ready failing "
        "before its listeners close, so a load balancer stops sending it work first. Set it above "
        "the balancer's check interval times its fall count (e.g. 3) behind a balancer.",
    )
    jobs_consumers: str = Field(
        "",
        description="Change-feed consumers that enqueue background jobs, comma list (known: "
        "fixity, a digest check of every stored blob; ian, IHE Instance Availability "
        "Notifications to the DICOM nodes registered with `--allow notify`; procedures, the "
        "NICIP/SNOMED CT coding of every study (R19); prefetch, rules-based prefetch of a "
        "patient's priors from every trust on an order, an admission or a study arriving, "
        "R47; ris, HL7 v2 notifications of study edits to each trust's RIS registered with "
        "`solent hl7 ris add`, R57). Empty: none.",
    )
    procedure_map: str = Field(
        "",
        description="CSV file mapping the procedure codes (and descriptions) each trust sends "
        "to NICIP and/or SNOMED CT and a body region (R19; columns issuer, coding_system, code, "
        "nicip, snomed, body_region, label). Re-read when it changes. Empty: codes are kept as "
        "received and only codes already sent as NICIP/SNOMED CT count as mapped.",
    )
    prefetch_max_priors: int = Field(
        3, ge=0, le=50, description="Most priors one prefetch warms (R47), best match first."
    )
    prefetch_max_age_days: int = Field(
        1825,
        ge=1,
        le=36500,
        description="Priors older than this many days are not prefetched (default 5 years).",
    )
    prefetch_relevance: str = Field(
        "code,region,modality",
        description="What makes a prior relevant, comma list of: code (the same mapped "
        "NICIP/SNOMED CT procedure), region (a body region in common), modality (a modality in "
        "common when either study's body region is unknown). Best match first in that order.",
    )
    prefetch_dicomweb_base: str = Field(
        "",
        description="The DICOMweb base URL the viewer's browsers use (e.g. "
        "https://pacs.example.nhs.uk/dicomweb): series metadata is warmed with its bulk data "
        "links under it. Empty: http://<bind address>:<HTTP port>/dicomweb.",
    )
    prefetch_settle_seconds: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="How long change-feed events wait before prefetch and coding follow them: "
        "a burst of a study's instances makes one job, not one per instance.",
    )
    ian_delay_seconds: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="How long a study must have been quiet (no instance stored or rejected) "
        "before its Instance Availability Notification goes out: one notification per study "
        "received, not one per instance.",
    )
    jobs_worker: bool = Field(
        True, description="`solent serve` follows the change feed and runs jobs in-process."
    )
    jobs_concurrency: int = Field(
        1, ge=1, le=64, description="Jobs one node runs at once (PostgreSQL queue)."
    )
    jobs_max_attempts: int = Field(
        6,
        ge=1,
        le=50,
        description="Runs of a failing job before it is marked failed (`solent jobs retry` "
        "runs it again); waits 2, 4, 8... seconds between runs.",
    )
    jobs_poll_seconds: float = Field(
        1.0, gt=0, le=60, description="How often the change feed and the queue are polled."
    )
    jobs_settle_seconds: float = Field(
        2.0,
        ge=0,
        le=60,
        description="Change-feed events younger than this wait (PostgreSQL): a sequence number "
        "is drawn before its transaction commits, so the newest may still have a gap below.",
    )
    proxy_protocol: bool = Field(
        False,
        description="The plain DICOM port and the MLLP port expect a PROXY protocol v1/v2 header "
        "(HAProxy `send-proxy`/`send-proxy-v2`) on every connection and check registered peers "
        "against the client address it carries; connections without one are closed. Only behind "
        "a TCP balancer, with the ports reachable through it alone.",
    )
    http_forwarded_from: str = Field(
        "",
        description="Comma list of addresses/networks of the HTTP balancers or reverse "
        "proxies whose X-Forwarded-For and X-Forwarded-Proto are believed (HAProxy `option "
        "forwardfor`); empty: none, the client's address is the TCP peer's.",
    )
    proxy_protocol_from: str = Field(
        "",
        description="Comma list of addresses/networks of the balancers allowed to send PROXY "
        "headers (e.g. 10.0.0.0/24); connections from elsewhere are closed. Empty: any.",
    )
    jobs_stalled_seconds: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="A worker that has sent no heartbeat for this long is presumed dead (killed, "
        "machine lost): the jobs it was running go back to the queue for another node, checked "
        "every third of this time. Workers beat every third of it too.",
    )
    mdt_heartbeat_seconds: float = Field(
        2.0,
        ge=0.1,
        le=60,
        description="Each node announces its members of every open MDT room this often; a node "
        "not heard from for three times this long (killed, cut off) drops out of the rooms, and "
        "a presenter who was connected to it can be replaced (claim).",
    )
    # --- end regional scale ---------------------------------------------------------------

    @field_validator("prefetch_relevance")
    @classmethod
    def _relevance_known(cls, v: str) -> str:
        from solent.domain.prior_relevance import Rules

        Rules.parse_criteria(v)
        return v

    @field_validator("ae_title")
    @classmethod
    def _ae_title_valid(cls, v: str) -> str:
        if not v or len(v) > 16 or "\\" in v or not v.isprintable() or v.strip() != v:
            raise ValueError("AE title must be 1-16 printable characters, no backslash or padding")
        return v

    @field_validator("database_url")
    @classmethod
    def _db_url_known(cls, v: str) -> str:
        if v and not v.startswith(("sqlite", "postgresql")):
            raise ValueError("use sqlite:///path or postgresql://user@host/db")
        return v

    @field_validator("storage_url")
    @classmethod
    def _storage_url_known(cls, v: str) -> str:
        if v and not v.startswith(("file://", "s3://")):
            raise ValueError("use file:///path or s3://bucket/prefix")
        return v

    @model_validator(mode="after")
    def _http_tls_pair(self) -> Settings:
        if (self.http_tls_cert is None) != (self.http_tls_key is None):
            raise ValueError("http_tls_cert and http_tls_key go together: set both or neither")
        return self

    @model_validator(mode="after")
    def _oidc_viewer_complete(self) -> Settings:
        if self.oidc_client_id and not self.oidc_issuer:
            raise ValueError(
                "oidc_client_id (viewer sign-in) needs oidc_issuer (its endpoints are read from "
                "the issuer's discovery document unless set)"
            )
        return self

    @model_validator(mode="after")
    def _no_demo_in_production(self) -> Settings:
        if self.production and self.demo_data:
            raise ValueError(
                "demo_data loads synthetic patients with NHS test numbers; it cannot be on "
                "in an archive whose production setting is on"
            )
        return self

    @model_validator(mode="after")
    def _s3_needs_bucket(self) -> Settings:
        if self.storage_url.startswith("s3://") and len(self.storage_url) <= len("s3://"):
            raise ValueError("storage_url s3:// needs a bucket name: s3://bucket/prefix")
        return self

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'solent.db').resolve()}"

    @property
    def effective_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "blobs").resolve().as_uri()

    @property
    def tmp_dir(self) -> Path:
        """Spool area for incoming bytes; on the data volume so a file blob store can rename."""
        return self.data_dir / "tmp"


def _unknown_env(environ: dict[str, str]) -> list[str]:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(k for k in environ if k.startswith(ENV_PREFIX) and k.upper() not in known)


def load_settings(
    config_file: Path | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings: TOML file < environment < explicit overrides.

    Raises ConfigurationError with a message that says what to fix.
    """
    env = dict(os.environ if environ is None else environ)
    unknown = _unknown_env(env)
    if unknown:
        known = ", ".join(ENV_PREFIX + n.upper() for n in sorted(Settings.model_fields))
        raise ConfigurationError(
            f"unknown setting(s) {', '.join(unknown)}; known settings are: {known} "
            "(see docs/configuration.md)"
        )
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_values = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigurationError(f"config file {config_file} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"config file {config_file} is not valid TOML: {exc}") from exc
        file_values = file_values.get("solent", file_values)
    # Environment wins over the file: pass file values as defaults the env can override.
    env_keys = {k[len(ENV_PREFIX) :].lower() for k in env if k.startswith(ENV_PREFIX)}
    init = {k: v for k, v in file_values.items() if k not in env_keys}
    init.update(overrides)
    saved = dict(os.environ)
    try:
        if environ is not None:
            os.environ.clear()
            os.environ.update(env)
        return Settings(**init)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            source = f"{ENV_PREFIX}{name.upper()}" if name in Settings.model_fields else name
            if name in init and name not in overrides:
                source = f"{name} (in {config_file})"
            msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{source}: {msg}")
        raise ConfigurationError(
            "invalid settings: " + "; ".join(problems) + " (see docs/configuration.md)"
        ) from exc
    finally:
        if environ is not None:
            os.environ.clear()
            os.environ.update(saved)
