"""The `solent` command line: version, trusts, DICOM nodes, import summary, check.

Most commands run in-process through `solent.cli.main` (the same code path as the console
script, minus interpreter start-up); the console script itself is exercised for --version and
against a running server.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from solent import __version__
from solent.cli import main
from solent.domain.principal import SYSTEM, Principal, PrincipalKind
from solent.services.access import AccessDenied
from tests.conftest import SOLENT, RunningServer

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every in-process `main()` call reads SOLENT_DATA_DIR like the console script does."""
    for key in [k for k in os.environ if k.startswith("SOLENT_")]:
        monkeypatch.delenv(key)
    data = tmp_path / "var"
    monkeypatch.setenv("SOLENT_DATA_DIR", str(data))
    return data


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _write_ct(path: Path, *, patient: str = "P1", study: str | None = None) -> str:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study or generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = patient, "TEST^CLI", "CT"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(32)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def test_version_from_the_console_script() -> None:
    out = subprocess.run([str(SOLENT), "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert out.stdout.strip() == f"solent {__version__}"


def test_trust_add_and_list(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "trust", "add", "ZZA", "--name", "Trust A")[:2] == (0, "trust ZZA added\n")
    assert run(capsys, "trust", "add", "ZZB", "--name", "Trust B")[0] == 0
    code, out, _ = run(capsys, "trust", "list", "--json")
    assert code == 0
    assert json.loads(out) == [
        {"code": "ZZA", "name": "Trust A"},
        {"code": "ZZB", "name": "Trust B"},
    ]
    code, out, _ = run(capsys, "trust", "list")
    assert code == 0 and "ZZA" in out and "Trust B" in out and "CODE" in out


def test_duplicate_trust_is_a_clear_error(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "trust", "add", "ZZA", "--name", "Trust A")
    code, _, err = run(capsys, "trust", "add", "ZZA", "--name", "Again")
    assert code == 1
    assert "ZZA" in err and "already exists" in err and "Traceback" not in err
    assert json.loads(run(capsys, "trust", "list", "--json")[1]) == [
        {"code": "ZZA", "name": "Trust A"}
    ]


def test_bad_trust_code_is_refused(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "trust", "add", "ZZ A/1", "--name", "Bad")
    assert code == 2 and "trust code" in err


def test_ae_add_list_remove(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "trust", "add", "ZZA", "--name", "Trust A")
    code, out, _ = run(
        capsys, "ae", "add", "CT01", "--host", "10.0.0.5", "--port", "104", "--trust", "ZZA"
    )
    assert code == 0 and "CT01" in out
    code, _, _ = run(
        capsys,
        *("ae", "add", "RIS", "--host", "ris.local", "--port", "11112", "--trust", "ZZA"),
        *("--allow", " query , retrieve"),
    )
    assert code == 0
    code, out, _ = run(capsys, "ae", "list", "--json")
    nodes = {n["ae_title"]: n for n in json.loads(out)}
    assert nodes["CT01"] == {
        "ae_title": "CT01",
        "host": "10.0.0.5",
        "port": 104,
        "trust": "ZZA",
        "allow": "store,query,retrieve",
        "tls_identity": "",
        "outside": False,
    }
    assert set(nodes["RIS"]["allow"].split(",")) == {"query", "retrieve"}
    assert run(capsys, "ae", "remove", "CT01")[0] == 0
    assert [n["ae_title"] for n in json.loads(run(capsys, "ae", "list", "--json")[1])] == ["RIS"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--trust", "NOPE"), 1, "trust NOPE"),
        (("--trust", "ZZA", "--allow", "store,delete"), 2, "--allow takes a comma list"),
        (("--trust", "ZZA", "--allow", ","), 2, "--allow takes a comma list"),
        (("--trust", "ZZA", "--port", "0"), 2, "--port must be 1-65535"),
    ],
)
def test_ae_add_errors(
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    code: int,
    message: str,
) -> None:
    run(capsys, "trust", "add", "ZZA", "--name", "Trust A")
    argv = ["ae", "add", "CT01", "--host", "h", "--port", "104", *args]
    got, _, err = run(capsys, *argv)
    assert got == code and message in err and "Traceback" not in err
    assert json.loads(run(capsys, "ae", "list", "--json")[1]) == [], "nothing was added"


def test_ae_add_rejects_bad_ae_title(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "trust", "add", "ZZA", "--name", "Trust A")
    long_title = "X" * 17
    code, _, err = run(
        capsys, "ae", "add", long_title, "--host", "h", "--port", "1", "--trust", "ZZA"
    )
    assert code == 2 and "AE title" in err


def test_ae_remove_unknown_is_a_clear_error(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "ae", "remove", "NOPE")
    assert code == 1 and "NOPE" in err and "does not exist" in err


def test_import_json_summary(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "trust", "add", "ZZA", "--name", "Trust A")
    src = tmp_path / "in"
    good = [src / "a.dcm", src / "sub" / "b.dcm"]
    for p in good:
        _write_ct(p)
    (src / "notes.txt").write_text("not dicom at all, just a note\n" * 10)
    code, out, _ = run(capsys, "import", str(src), "--trust", "ZZA", "--json")
    summary = json.loads(out)
    assert code == 1, "a rejected file makes the exit code non-zero"
    assert sorted(summary["stored"]) == sorted(map(str, good))
    assert summary["duplicate"] == []
    assert summary["rejected"] == [
        {"path": str(src / "notes.txt"), "reason": summary["rejected"][0]["reason"]}
    ]
    assert "not a DICOM file" in summary["rejected"][0]["reason"]
    # Again: everything already stored is a duplicate; only the bad file is still rejected.
    code, out, _ = run(capsys, "import", str(src), "--trust", "ZZA", "--json")
    again = json.loads(out)
    assert sorted(again["duplicate"]) == sorted(map(str, good)) and again["stored"] == []
    assert code == 1
    # All good: exit 0.
    code, out, _ = run(capsys, "import", str(good[0]), "--trust", "ZZA", "--json")
    assert code == 0 and json.loads(out)["duplicate"] == [str(good[0])]


def test_import_batch_keeps_one_outcome_per_file(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Files are committed in batches; conflicts inside one batch still resolve file by file."""
    run(capsys, "trust", "add", "ZZA", "--name", "Trust A")
    src = tmp_path / "in"
    study = generate_uid()
    first = src / "a1.dcm"
    uid = _write_ct(first, study=study)
    ds = pydicom.dcmread(first)
    ds.SeriesDescription = "same UID, other bytes"
    ds.save_as(src / "a2.dcm")  # later in sorted order: a conflict
    (src / "a3.dcm").write_bytes(first.read_bytes())  # identical copy: a duplicate
    _write_ct(src / "b1.dcm", patient="OTHER", study=study)  # same study, other patient
    others = [src / f"c{i}.dcm" for i in range(3)]
    for path in others:
        _write_ct(path, study=study)
    code, out, _ = run(capsys, "import", str(src), "--trust", "ZZA", "--json", "--workers", "1")
    summary = json.loads(out)
    assert code == 1
    assert sorted(summary["stored"]) == sorted(map(str, [first, *others]))
    assert summary["duplicate"] == [str(src / "a3.dcm")]
    reasons = {Path(r["path"]).name: r["reason"] for r in summary["rejected"]}
    assert reasons["a2.dcm"].startswith("conflict: an instance with this SOP Instance UID")
    assert reasons["b1.dcm"].startswith("patient-mismatch:")
    assert set(reasons) == {"a2.dcm", "b1.dcm"}
    code, out, _ = run(capsys, "stats", "--json")
    assert json.loads(out)["instances"] == 4
    assert pydicom.dcmread(first).SOPInstanceUID == uid
    # Distinct UIDs, one patient mismatch: the batch transaction fails as a whole and each
    # file is then committed alone, so the good ones are still stored.
    study2, batch = generate_uid(), tmp_path / "batch"
    for name, patient in (("d1", "P2"), ("d2", "P3"), ("d3", "P2")):
        _write_ct(batch / f"{name}.dcm", patient=patient, study=study2)
    code, out, _ = run(capsys, "import", str(batch), "--trust", "ZZA", "--json")
    summary = json.loads(out)
    assert sorted(Path(p).name for p in summary["stored"]) == ["d1.dcm", "d3.dcm"]
    assert [Path(r["path"]).name for r in summary["rejected"]] == ["d2.dcm"]


def test_import_text_summary_and_errors(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "trust", "add", "ZZA", "--name", "Trust A")
    f = tmp_path / "one.dcm"
    _write_ct(f)
    code, _, err = run(capsys, "import", str(f), "--trust", "ZZA", "--no-progress")
    assert code == 0 and "stored 1, duplicate 0, rejected 0" in err
    code, _, err = run(capsys, "import", str(f), "--trust", "NOPE")
    assert code == 1 and "trust NOPE does not exist" in err
    code, _, err = run(capsys, "import", str(tmp_path / "missing"), "--trust", "ZZA")
    assert code == 1 and "no such file or folder" in err


def test_import_jsonl_streams_one_line_per_file(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "trust", "add", "ZZA", "--name", "Trust A")
    uid = _write_ct(tmp_path / "in" / "a.dcm")
    code, out, _ = run(capsys, "import", str(tmp_path / "in"), "--trust", "ZZA", "--jsonl")
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert code == 0
    assert lines[0]["outcome"] == "stored" and lines[0]["sop_instance_uid"] == uid


def test_check_on_a_clean_archive(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "trust", "add", "ZZA", "--name", "Trust A")
    _write_ct(tmp_path / "a.dcm")
    run(capsys, "import", str(tmp_path / "a.dcm"), "--trust", "ZZA", "--json")
    code, out, _ = run(capsys, "check")
    assert code == 0 and "archive is clean" in out
    code, out, _ = run(capsys, "check", "--json")
    assert code == 0 and json.loads(out)["instances"] == 1


def test_check_repair_removes_rows_without_blob_and_audits_each(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check --repair` goes through the check service as the operator: a row whose blob
    vanished is removed with a `delete` audit record naming its patient and study, an orphan
    blob is deleted, and the audit chain still verifies."""
    run(capsys, "trust", "add", "ZZA", "--name", "Trust A")
    study = generate_uid()
    lost = _write_ct(tmp_path / "in" / "lost.dcm", patient="P-LOST", study=study)
    _write_ct(tmp_path / "in" / "kept.dcm", patient="P-LOST", study=study)
    run(capsys, "import", str(tmp_path / "in"), "--trust", "ZZA", "--json")
    blobs = sorted(p for p in (data_dir / "blobs").rglob("*") if p.is_file())
    victim = next(p for p in blobs if pydicom.dcmread(p).SOPInstanceUID == lost)
    victim.unlink()
    orphan = data_dir / "blobs" / "ff" / "ff" / ("f" * 64)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"not indexed")
    os.utime(orphan, (0, 0))
    code, out, _ = run(capsys, "check")
    assert code == 1 and "1 rows without blob" in out and "1 orphan blobs" in out
    code, out, _ = run(capsys, "check", "--repair", "--json")
    assert code == 0, out
    assert json.loads(out)["repaired"]["rows_without_blob_removed"] == 1
    assert not orphan.exists()
    from solent.app import build_archive
    from solent.settings import load_settings

    archive = build_archive(load_settings(environ={}, data_dir=data_dir))
    try:
        deletes = archive.audit.search(action="delete")
        row = next(r for r in deletes if r["patient_id"])
        assert (row["patient_issuer"], row["patient_id"], row["study_uid"]) == (
            "ZZA",
            "P-LOST",
            study,
        )
        assert lost in row["detail"] and row["actor_name"].startswith("cli:")
        assert any("orphan_blobs" in r["detail"] for r in deletes)
        assert archive.services.access.stats(SYSTEM)["instances"] == 1
        clinician = Principal(PrincipalKind.USER, "drza", "ZZA", frozenset({"clinician"}))
        with pytest.raises(AccessDenied):
            archive.services.check.run(clinician, repair=True)
    finally:
        archive.close()
    code, out, _ = run(capsys, "check")
    assert code == 0 and "archive is clean" in out
    code, out, _ = run(capsys, "audit", "verify")
    assert code == 0, out


def test_stats_json(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "trust", "add", "ZZA", "--name", "Trust A")
    study = generate_uid()
    for i in range(2):
        _write_ct(tmp_path / f"{i}.dcm", study=study)
    run(capsys, "import", str(tmp_path), "--trust", "ZZA", "--json")
    code, out, _ = run(capsys, "stats", "--json")
    stats = json.loads(out)
    assert code == 0
    assert (stats["trusts"], stats["patients"], stats["studies"], stats["instances"]) == (
        1,
        1,
        1,
        2,
    )


def test_cli_works_on_the_data_dir_of_a_running_server(
    server: RunningServer, tmp_path: Path
) -> None:
    """SOLENT_DATA_DIR of a live server: the CLI adds a trust and imports; the server sees it."""
    assert server.cli("trust", "add", "ZZC", "--name", "Trust C").returncode == 0
    _write_ct(tmp_path / "live.dcm", patient="LIVE1")
    imported = server.cli("import", str(tmp_path / "live.dcm"), "--trust", "ZZC", "--json")
    assert json.loads(imported.stdout)["stored"] == [str(tmp_path / "live.dcm")]
    stats = httpx.get(server.base_url + "/api/stats", headers=server.headers(), timeout=30)
    assert stats.status_code == 200 and stats.json()["instances"] == 1
    trusts = httpx.get(server.base_url + "/api/trusts", headers=server.headers(), timeout=30)
    assert {t["code"] for t in trusts.json()} == {"ZZA", "ZZB", "ZZC"}
    check = server.cli("check", "--json")
    assert check.returncode == 0 and json.loads(check.stdout)["instances"] == 1
