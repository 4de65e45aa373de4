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
    bind_address: str = Field("127.0.0.1", description="Address every listener binds to.")
    http_port: int = Field(8042, ge=0, le=65535, description="HTTP port; 0 picks a free port.")
    dicom_port: int = Field(11112, ge=0, le=65535, description="DICOM port; 0 picks a free port.")
    ae_title: str = Field("SOLENT", description="Our DICOM Application Entity title.")
    hl7_port: int = Field(
        2575, ge=0, le=65535, description="HL7 v2 MLLP port; 0 picks a free port."
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
            problems.append(f"{source}: {err['msg']}")
        raise ConfigurationError(
            "invalid settings: " + "; ".join(problems) + " (see docs/configuration.md)"
        ) from exc
    finally:
        if environ is not None:
            os.environ.clear()
            os.environ.update(saved)
