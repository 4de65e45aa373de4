"""`solent hl7 ris add|list|remove` (R57): an administrator registers each trust's RIS; bad
input gets a clear refusal and nothing is stored; each change is audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from solent.app import build_archive
from solent.cli import main
from solent.settings import load_settings
from tests.unit.security_fixtures import cli_env


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "var"
    cli_env(monkeypatch, data)
    assert main(["trust", "add", "ZZA", "--name", "Trust A"]) == 0
    return data


def _list(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main(["hl7", "ris", "list", "--json"]) == 0
    rows: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return rows


def test_a_trust_ris_is_added_listed_and_removed(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add = ["hl7", "ris", "add", "ZZA", "--host", "ris.zza.nhs.uk", "--port", "2575"]
    assert main([*add, "--application", "CRIS"]) == 0
    assert "CRIS^ZZA at ris.zza.nhs.uk:2575" in capsys.readouterr().out
    (row,) = _list(capsys)
    assert row["trust"] == "ZZA" and row["facility"] == "ZZA" and row["tls"] == "no"
    assert main([*add, "--application", "CRIS"]) == 1  # one RIS per trust
    assert "remove it first" in capsys.readouterr().err
    assert main(["hl7", "ris", "remove", "ZZA"]) == 0
    assert _list(capsys) == []
    archive = build_archive(load_settings(environ={}, data_dir=data))
    try:
        changes = [a["detail"] for a in archive.audit.search(action="security-alert", limit=20)]
    finally:
        archive.close()
    assert any("HL7 destination added" in d for d in changes)
    assert any("HL7 destination removed" in d for d in changes)


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (["--application", "CR|S"], "without HL7 delimiters"),
        (["--application", "CRIS", "--facility", "Z^A"], "without HL7 delimiters"),
        (["--application", "CR\x1cS"], "without HL7 delimiters or control characters"),
        (["--application", "CRIS", "--host", "ris.zza:2575"], "no IP address or host name"),
        (["--application", "CRIS", "--host", "ris zza"], "no IP address or host name"),
        (["--application", "CRIS", "--host", ""], "no IP address or host name"),
        (["--application", "CRIS", "--host", "r" * 300], "no IP address or host name"),
        (["--application", "CRIS", "--port", "0"], "--port must be 1-65535"),
        (["--application", "CRIS", "--port", "65536"], "--port must be 1-65535"),
        (["--application", "CRIS", "--tls-ca", "/nonexistent.pem"], "--tls-ca needs --tls"),
        (["--application", "CRIS", "--tls", "--tls-ca", "/nonexistent.pem"], "no such file"),
    ],
)
def test_bad_input_is_refused_and_nothing_stored(
    data: Path, capsys: pytest.CaptureFixture[str], extra: list[str], why: str
) -> None:
    add = ["hl7", "ris", "add", "ZZA", "--host", "127.0.0.1", "--port", "2575"]
    assert main([*add, *extra]) != 0
    assert why in capsys.readouterr().err
    assert _list(capsys) == []


def test_an_unknown_trust_is_refused(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add = ["hl7", "ris", "add", "ZZQ", "--host", "127.0.0.1", "--port", "2575"]
    assert main([*add, "--application", "CRIS"]) != 0
    assert "trust ZZQ does not exist" in capsys.readouterr().err
