"""SIGKILL in the middle of a large import loses nothing that was reported stored.

`solent import --jsonl` prints one line per file once it is durable (blob fsynced or PUT, index
committed). We kill the process after some of those lines, then prove: every instance reported
stored is in the index with its exact bytes; `solent check` finds at most orphan blobs of the
files that were in flight (never a row without its blob); `--repair` leaves a clean archive that
still holds every reported instance; and importing again completes the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from solent.app import build_archive
from solent.services.check import check_archive
from solent.settings import load_settings
from tests.conftest import SOLENT
from tests.contract.synthetic import Written, new_uid, write_instance

FILES = 180
KILL_AFTER = 45


def solent(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SOLENT), *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def check_report(env: dict[str, str], *extra: str) -> tuple[int, dict[str, Any]]:
    done = solent(env, "check", "--json", *extra)
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, report


def generate(folder: Path) -> dict[str, Written]:
    """Six studies of two series each, small 32x32 CT slices: many files, quick to write."""
    written: dict[str, Written] = {}
    per_series = FILES // 12
    n = 0
    for s in range(6):
        study = new_uid()
        for _ in range(2):
            series = new_uid()
            for _ in range(per_series):
                w = write_instance(
                    folder / f"st{s}" / f"{n:04d}.dcm",
                    patient_id=f"CRASH{s % 3}",
                    study_uid=study,
                    series_uid=series,
                    seed=n,
                    size=32,
                )
                written[w.sop_instance_uid] = w
                n += 1
    return written


@pytest.fixture(params=["sqlite-filesystem", "postgresql-s3"])
def backend_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """SOLENT_* variables of the archive under test (the embedded default, or the shared one)."""
    env = {"SOLENT_DATA_DIR": str(tmp_path / "var")}
    if request.param == "postgresql-s3":
        env["SOLENT_DATABASE_URL"] = request.getfixturevalue("fresh_postgres_url")
        env.update(request.getfixturevalue("s3_env"))
    return env


def test_sigkill_mid_import_loses_nothing_reported_stored(
    tmp_path: Path, backend_env: dict[str, str]
) -> None:
    written = generate(tmp_path / "incoming")
    assert len(written) == FILES
    admin = build_archive(load_settings(environ=backend_env))
    admin.index.add_trust("ZZA", "Trust A")
    admin.close()

    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    env.update(backend_env)
    command = [str(SOLENT), "import", str(tmp_path / "incoming"), "--trust", "ZZA"]
    with (tmp_path / "import.stderr").open("w") as errors:
        proc = subprocess.Popen(
            [*command, "--jsonl", "--workers", "4"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        assert proc.stdout is not None
        lines: list[dict[str, Any]] = []
        for raw in proc.stdout:
            lines.append(json.loads(raw))
            if len(lines) == KILL_AFTER:
                proc.send_signal(signal.SIGKILL)
                break
        # Lines already in the pipe were printed after their file was durable: they count too.
        lines += [json.loads(raw) for raw in proc.stdout if raw.strip()]
        assert proc.wait(timeout=60) == -signal.SIGKILL, "the import ended before the kill"

    assert all(line["outcome"] == "stored" for line in lines), lines
    reported = {line["sop_instance_uid"]: line["path"] for line in lines}
    assert KILL_AFTER <= len(reported) < FILES
    for uid, path in reported.items():
        assert Path(path) == written[uid].path

    def assert_reported_intact() -> None:
        archive = build_archive(load_settings(environ=backend_env))
        try:
            for uid in reported:
                original = written[uid]
                digest = archive.index.instance_digest(uid)
                assert digest is not None, f"reported stored but not indexed: {uid}"
                assert digest[0] == original.sha256
                with archive.store.open(digest[1]) as fp:
                    assert hashlib.sha256(fp.read()).hexdigest() == original.sha256
        finally:
            archive.close()

    assert_reported_intact()

    # Right after the crash: files in flight may have left blobs without rows, never the reverse.
    _, report = check_report(env)
    assert report["missing_blobs"] == [] and report["size_mismatches"] == []
    assert report["instances"] >= len(reported)

    rc, repaired = check_report(env, "--repair")
    assert rc == 0
    assert repaired["repaired"]["rows_without_blob_removed"] == 0
    rc, after = check_report(env)
    assert rc == 0 and after["clean"] is True, after
    assert after["instances"] == after["blobs"] == report["instances"]
    spool = Path(backend_env["SOLENT_DATA_DIR"]) / "blobs" / ".tmp"
    assert not spool.exists() or list(spool.iterdir()) == []  # half-copied blobs are gone too
    assert_reported_intact()

    # The import can simply be run again: it stores the rest and skips what is there.
    done = solent(env, *command[1:], "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert len(summary["duplicate"]) == report["instances"]
    assert len(summary["stored"]) + len(summary["duplicate"]) == FILES
    archive = build_archive(load_settings(environ=backend_env))
    try:
        final = check_archive(archive.index, archive.store)
        assert final.clean and final.instances == final.blobs == FILES
    finally:
        archive.close()
