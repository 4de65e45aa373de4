"""Settings: defaults, environment, TOML file, and start-up failures that say what to fix."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from solent.errors import ConfigurationError
from solent.settings import Settings, load_settings
from tests.conftest import REPO, SOLENT

DOC = REPO / "docs" / "configuration.md"


def test_defaults_are_the_embedded_archive() -> None:
    s = load_settings(environ={})
    assert s.data_dir == Path("./var")
    assert (s.http_port, s.dicom_port, s.hl7_port) == (8042, 11112, 2575)
    assert s.ae_title == "SOLENT"
    assert s.bind_address == "127.0.0.1"
    data = Path("./var").resolve()
    assert s.effective_database_url == f"sqlite:///{data / 'solent.db'}"
    assert s.effective_storage_url == (data / "blobs").as_uri()
    assert s.conflict_policy == "reject"
    assert s.log_patient_data is False


def test_environment_overrides_defaults(tmp_path: Path) -> None:
    s = load_settings(
        environ={
            "SOLENT_DATA_DIR": str(tmp_path),
            "SOLENT_HTTP_PORT": "0",
            "SOLENT_AE_TITLE": "REGIONPACS",
            "SOLENT_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test",
            "SOLENT_STORAGE_URL": "s3://bucket/prefix",
            "SOLENT_DEMO_DATA": "true",
            "SOLENT_LOG_FORMAT": "json",
        }
    )
    assert s.data_dir == tmp_path and s.http_port == 0 and s.ae_title == "REGIONPACS"
    assert s.effective_database_url == "postgresql://postgres@127.0.0.1:5432/test"
    assert s.effective_storage_url == "s3://bucket/prefix"
    assert s.demo_data is True and s.log_format == "json"


def test_toml_file_with_environment_winning(tmp_path: Path) -> None:
    cfg = tmp_path / "solent.toml"
    cfg.write_text('[solent]\nhttp_port = 9000\nae_title = "FROMFILE"\nimport_workers = 4\n')
    s = load_settings(cfg, environ={"SOLENT_AE_TITLE": "FROMENV"})
    assert (s.http_port, s.ae_title, s.import_workers) == (9000, "FROMENV", 4)
    # Keys may also sit at top level of the file.
    flat = tmp_path / "flat.toml"
    flat.write_text("dicom_port = 104\n")
    assert load_settings(flat, environ={}).dicom_port == 104


def test_missing_or_broken_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("http_port = = 1\n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_settings(bad, environ={})


def test_unknown_environment_setting_fails_naming_it() -> None:
    with pytest.raises(ConfigurationError) as err:
        load_settings(environ={"SOLENT_FOO": "1", "SOLENT_HTTP_PORT": "1"})
    assert "SOLENT_FOO" in str(err.value)
    assert "SOLENT_HTTP_PORT" in str(err.value)  # the list of known settings helps fix typos


def test_unknown_file_setting_fails_naming_it(tmp_path: Path) -> None:
    cfg = tmp_path / "solent.toml"
    cfg.write_text("htp_port = 1\n")
    with pytest.raises(ConfigurationError, match=r"htp_port \(in .*solent.toml\): unknown"):
        load_settings(cfg, environ={})


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SOLENT_HTTP_PORT": "70000"}, "SOLENT_HTTP_PORT"),
        ({"SOLENT_DICOM_PORT": "-5"}, "SOLENT_DICOM_PORT"),
        ({"SOLENT_HL7_PORT": "many"}, "SOLENT_HL7_PORT"),
        ({"SOLENT_AE_TITLE": "A_TITLE_LONGER_THAN_16"}, "SOLENT_AE_TITLE"),
        ({"SOLENT_AE_TITLE": "BAD\\AE"}, "SOLENT_AE_TITLE"),
        ({"SOLENT_DATABASE_URL": "mysql://root@db/solent"}, "SOLENT_DATABASE_URL"),
        ({"SOLENT_STORAGE_URL": "ftp://files/blobs"}, "SOLENT_STORAGE_URL"),
        ({"SOLENT_STORAGE_URL": "s3://"}, "s3://bucket"),
        ({"SOLENT_LOG_FORMAT": "xml"}, "SOLENT_LOG_FORMAT"),
        ({"SOLENT_CONFLICT_POLICY": "merge"}, "SOLENT_CONFLICT_POLICY"),
        ({"SOLENT_IMPORT_WORKERS": "0"}, "SOLENT_IMPORT_WORKERS"),
        ({"SOLENT_DEMO_DATA": "perhaps"}, "SOLENT_DEMO_DATA"),
    ],
)
def test_invalid_value_fails_naming_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        load_settings(environ=env)
    assert named in str(err.value)
    assert "docs/configuration.md" in str(err.value)


def test_invalid_value_in_file_names_key_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "solent.toml"
    cfg.write_text("[solent]\nhttp_port = 70000\n")
    with pytest.raises(ConfigurationError, match=r"http_port \(in .*solent.toml\)"):
        load_settings(cfg, environ={})


def test_settings_are_frozen() -> None:
    s = load_settings(environ={})
    with pytest.raises(Exception, match="frozen"):
        s.http_port = 1


def test_every_setting_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `(SOLENT_[A-Z0-9_]+)` \|", text, flags=re.M))
    fields = {"SOLENT_" + name.upper() for name in Settings.model_fields}
    assert not fields - rows, f"settings missing from docs/configuration.md: {fields - rows}"
    assert not rows - fields, f"docs/configuration.md documents unknown settings: {rows - fields}"
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"


def test_documentation_has_postgresql_and_s3_examples() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert "SOLENT_DATABASE_URL=postgresql://" in text
    assert "SOLENT_STORAGE_URL=s3://" in text and "SOLENT_S3_ENDPOINT_URL=" in text


def _solent(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    return subprocess.run(
        [str(SOLENT), *args], env={**base, **env}, capture_output=True, text=True, timeout=60
    )


def test_serve_config_file_path_is_read(tmp_path: Path) -> None:
    """`solent serve --config FILE` goes through load_settings: a bad file stops serve."""
    cfg = tmp_path / "solent.toml"
    cfg.write_text(f'[solent]\ndata_dir = "{tmp_path / "var"}"\nhttp_port = 70000\n')
    run = _solent(["serve", "--config", str(cfg)], {})
    assert run.returncode == 2
    assert "http_port" in run.stderr and "configuration error" in run.stderr
    assert not (tmp_path / "var").exists(), "nothing is created before settings are valid"


def test_cli_commands_read_the_same_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "solent.toml"
    cfg.write_text(f'[solent]\ndata_dir = "{tmp_path / "var"}"\n')
    assert _solent(["trust", "add", "ZZA", "--name", "A", "--config", str(cfg)], {}).returncode == 0
    listed = _solent(["--config", str(cfg), "trust", "list", "--json"], {})
    assert listed.returncode == 0 and '"ZZA"' in listed.stdout
    assert (tmp_path / "var" / "solent.db").is_file()


def test_unknown_setting_stops_the_cli_with_exit_2(tmp_path: Path) -> None:
    run = _solent(["trust", "list"], {"SOLENT_DATA_DIR": str(tmp_path), "SOLENT_FOO": "1"})
    assert run.returncode == 2
    assert "SOLENT_FOO" in run.stderr and "Traceback" not in run.stderr
