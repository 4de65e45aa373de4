"""`solent safety hazards | configuration | limitations` (R46): what a trust's Clinical Safety
Officer takes into its DCB0160 safety case, read from this release and this node's settings."""

from __future__ import annotations

import csv
import io
import json
import os
import tomllib
from pathlib import Path

import pytest

from solent import __version__
from solent.cli import main
from solent.safety.cli import CSV_COLUMNS
from solent.safety.hazards import hazard_log

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call reads SOLENT_* like the console script; none from the outer environment."""
    for key in [k for k in os.environ if k.startswith("SOLENT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SOLENT_DATA_DIR", str(tmp_path / "var"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert err == ""
    return code, out


def _finding(out: str, setting: str) -> dict[str, object]:
    rows = [f for f in json.loads(out) if setting in f["setting"].split(", ")]
    assert len(rows) == 1, rows
    row: dict[str, object] = rows[0]
    return row


def test_hazards_csv_is_one_row_per_hazard_with_the_columns_a_safety_case_needs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run(capsys, "safety", "hazards", "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert tuple(rows[0]) == CSV_COLUMNS
    for column in ("hazard_id", "initial_risk", "controls", "evidence", "residual_risk"):
        assert column in CSV_COLUMNS
    assert [r["hazard_id"] for r in rows] == [h.id for h in hazard_log()]
    merge = next(r for r in rows if r["r45_topic"] == "wrong merge")
    assert merge["release"] == __version__
    assert (merge["initial_severity"], merge["initial_likelihood"], merge["initial_risk"]) == (
        "major",
        "medium",
        "3",
    )
    assert merge["residual_risk"] == "2"
    assert "HAZ-001.C1 (design)" in merge["controls"]
    assert (
        "tests/unit/test_identity_links.py::test_merge_is_idempotent_and_same_authority_only"
        in (merge["evidence"].splitlines())
    )
    assert all(1 <= int(r["residual_risk"]) <= int(r["initial_risk"]) <= 5 for r in rows)


def test_hazards_json_and_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "safety", "hazards", "--json")
    assert code == 0
    body = json.loads(out)
    assert body["release"] == __version__
    assert set(body["risk_ratings"]) == {"1", "2", "3", "4", "5"}
    lossy = next(
        h for h in body["hazards"] if h["r45_topic"] == "lossy images used for primary diagnosis"
    )
    assert lossy["initial"] == {"severity": "considerable", "likelihood": "medium", "risk": 3}
    assert all(c["evidence"] for c in lossy["controls"] if c["kind"] == "design")
    code, out = run(capsys, "safety", "hazards")
    assert code == 0
    assert "HAZ-015  MDT live room shows followers the wrong view or patient" in out
    assert "risk 3 (major, medium) -> residual 2 (major, very-low)" in out


def test_unknown_hl7_senders_are_flagged_high_only_when_on(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = run(capsys, "safety", "configuration", "--json")
    assert code == 0
    safe = _finding(out, "SOLENT_HL7_ALLOW_UNKNOWN_SENDERS")
    assert (safe["flagged"], safe["value"]) == (False, "false")
    monkeypatch.setenv("SOLENT_HL7_ALLOW_UNKNOWN_SENDERS", "true")
    code, out = run(capsys, "safety", "configuration", "--json")
    risky = _finding(out, "SOLENT_HL7_ALLOW_UNKNOWN_SENDERS")
    assert (risky["flagged"], risky["severity"], risky["value"]) == (True, "high", "true")
    assert "HAZ-001" in risky["hazards"]
    assert "solent hl7 sender add" in str(risky["advice"])
    assert json.loads(out)[0] == risky  # flagged, most severe first
    code, out = run(capsys, "safety", "configuration")
    assert "RISK  high    SOLENT_HL7_ALLOW_UNKNOWN_SENDERS = true" in out
    assert "What to do: Turn it off; register each PAS/RIS/EMPI feed" in out


def test_plain_dicom_is_a_high_risk_on_a_network_address_and_low_on_loopback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out = run(capsys, "safety", "configuration", "--json")
    local = _finding(out, "SOLENT_DICOM_TLS_PORT")
    assert (local["flagged"], local["severity"], local["value"]) == (True, "low", "-1 (off)")
    monkeypatch.setenv("SOLENT_BIND_ADDRESS", "10.1.2.3")
    _, out = run(capsys, "safety", "configuration", "--json")
    assert _finding(out, "SOLENT_DICOM_TLS_PORT")["severity"] == "high"
    monkeypatch.setenv("SOLENT_DICOM_TLS_PORT", "2762")
    _, out = run(capsys, "safety", "configuration", "--json")
    no_ca = _finding(out, "SOLENT_DICOM_TLS_PORT")
    assert (no_ca["flagged"], no_ca["severity"]) == (True, "medium")
    monkeypatch.setenv("SOLENT_DICOM_TLS_CA", "/etc/solent/ca.pem")
    _, out = run(capsys, "safety", "configuration", "--json")
    mutual = _finding(out, "SOLENT_DICOM_TLS_PORT")
    assert (mutual["flagged"], mutual["value"]) == (False, "2762 (mutual TLS)")


def test_audit_kept_shorter_than_images_is_flagged(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out = run(capsys, "safety", "configuration", "--json")
    assert _finding(out, "SOLENT_AUDIT_RETENTION_YEARS")["flagged"] is False
    monkeypatch.setenv("SOLENT_AUDIT_RETENTION_YEARS", "6")
    _, out = run(capsys, "safety", "configuration", "--json")
    short = _finding(out, "SOLENT_AUDIT_RETENTION_YEARS")
    assert (short["flagged"], short["value"]) == (True, "6 (images: 8)")
    monkeypatch.setenv("SOLENT_AUDIT_RETENTION_YEARS", "30")
    _, out = run(capsys, "safety", "configuration", "--json")
    assert _finding(out, "SOLENT_AUDIT_RETENTION_YEARS")["flagged"] is False


def test_prefetch_off_is_flagged_and_the_config_file_is_read_like_serve(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "solent.toml"
    config.write_text('jobs_consumers = "prefetch,fixity"\nprefetch_max_priors = 0\n')
    _, out = run(capsys, "safety", "configuration", "--json")
    assert any(
        f["flagged"] and "HAZ-016" in f["hazards"] and "prefetch" in f["advice"]
        for f in json.loads(out)
        if f["setting"] == "SOLENT_JOBS_CONSUMERS"
    )
    _, out = run(capsys, "--config", str(config), "safety", "configuration", "--json")
    assert not any(f["flagged"] for f in json.loads(out) if f["setting"] == "SOLENT_JOBS_CONSUMERS")
    none_warmed = _finding(out, "SOLENT_PREFETCH_MAX_PRIORS")
    assert (none_warmed["flagged"], none_warmed["value"]) == (True, "0")


def test_strict_fails_a_risky_node_and_passes_a_hardened_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code, _ = run(capsys, "safety", "configuration", "--strict")
    assert code == 1
    (tmp_path / "map.csv").write_text(
        "issuer,coding_system,code,nicip,snomed,body_region,label\nZZA,L,CTHEAD,CHEAD,,HEAD,CT\n",
        encoding="utf-8",
    )
    for name, value in {
        "PRODUCTION": "true",
        "JOBS_CONSUMERS": "fixity,ian,procedures,prefetch",
        "PROCEDURE_MAP": str(tmp_path / "map.csv"),
        "DICOM_TLS_PORT": "2762",
        "DICOM_TLS_CA": "/etc/solent/ca.pem",
        "HL7_TLS_PORT": "2576",
        "HL7_TLS_CA": "/etc/solent/ca.pem",
        "HTTP_TLS_CERT": "/etc/solent/http.pem",
        "HTTP_TLS_KEY": "/etc/solent/http.key",
    }.items():
        monkeypatch.setenv(f"SOLENT_{name}", value)
    code, out = run(capsys, "safety", "configuration", "--strict")
    assert code == 0, out
    assert "0 configuration risk(s) flagged" in out


def test_limitations_name_pds_and_xds(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "safety", "limitations", "--json")
    assert code == 0
    titles = {x["id"]: x["title"] for x in json.loads(out)}
    assert "PDS is not connected" in titles.values()
    assert any("XDS-I" in t for t in titles.values())
    code, out = run(capsys, "safety", "limitations")
    assert "LIM-001  No lossy-compression policy setting" in out


def test_the_data_files_are_installed_with_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    data = project["tool"]["setuptools"]["package-data"]["solent"]
    assert "safety/*.toml" in data
    shipped = {p.name for p in (ROOT / "src/solent/safety").glob("*.toml")}
    assert shipped == {"hazard_log.toml", "limitations.toml"}


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "unreadable: No such file"),
        ("issuer,code\n", "invalid: "),
        (b"\xff\xfe\x00", "unreadable"),
    ],
)
def test_a_procedure_map_the_node_cannot_load_is_flagged_as_none(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    content: str | bytes | None,
    said: str,
) -> None:
    """A SOLENT_PROCEDURE_MAP naming no file (or one `solent serve` refuses) was reported ok."""
    path = tmp_path / "map.csv"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif content is not None:
        path.write_bytes(content)
    monkeypatch.setenv("SOLENT_PROCEDURE_MAP", str(path))
    _, out = run(capsys, "safety", "configuration", "--json")
    finding = _finding(out, "SOLENT_PROCEDURE_MAP")
    assert finding["flagged"] is True and said in finding["value"], finding
