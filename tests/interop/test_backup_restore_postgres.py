"""The backup and restore drill of docs/operations.md, run for real (issue 16).

A node on PostgreSQL with a file blob store serves while its index is dumped (`pg_dump`) and
then its blobs are copied; an instance stored between the two is in the copy as an orphan blob,
as the drill expects. The dump is restored into a new database (`pg_restore`) beside the copied
blobs: `solent check` finds every indexed instance's blob, `solent audit verify` proves the
audit chain (its key is kept outside the index and carried with the other secrets), and a node
started on the restored copy answers QIDO and WADO-RS with the very bytes that were stored. A
blob lost from the copy is what `solent check` then reports.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pydicom
import pytest
from psycopg import sql

from tests.conftest import RunningServer, require, start_server
from tests.interop.hl7_support import write_ct

pytestmark = [pytest.mark.interop, pytest.mark.slow]

AUDIT_KEY = "backup-drill-" + "k" * 40  # the drill's stand-in for the site's secret store


def _admin(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture
def scratch_databases(postgres_url: str) -> Iterator[tuple[str, str]]:
    """(live, restored): two new databases, dropped afterwards."""
    from urllib.parse import urlsplit, urlunsplit

    admin = _admin(postgres_url)
    names = [f"solent_drill_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    urls = [urlunsplit(urlsplit(admin)._replace(path="/" + n)) for n in names]
    yield urls[0], urls[1]
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))


def _ct(folder: Path, n: int, study_uid: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_ct(
        folder / f"ct{n}.dcm",
        patient_id=f"D{n:05d}",
        issuer="ZZA",
        name=f"DRILL^PATIENT{n}",
        birth_date="19700101",
        accession=f"ACC{n:05d}",
        study_uid=study_uid,
        study_date="20261201",
    )


def _node(data: Path, database: str, blobs: Path) -> dict[str, str]:
    return {
        "SOLENT_DATABASE_URL": database,
        "SOLENT_STORAGE_URL": blobs.resolve().as_uri(),
        "SOLENT_AUDIT_KEY": AUDIT_KEY,
    }


def _check(srv: RunningServer, *extra: str) -> tuple[int, dict[str, object]]:
    done = srv.cli("check", "--json", *extra, check=False)
    return done.returncode, json.loads(done.stdout)


def test_backup_while_serving_then_restore_is_consistent_and_serves_the_same_bytes(
    tmp_path: Path, scratch_databases: tuple[str, str]
) -> None:
    require(shutil.which("pg_dump") is not None, "pg_dump (Debian postgresql-client)")
    require(shutil.which("pg_restore") is not None, "pg_restore (Debian postgresql-client)")
    live_db, restored_db = scratch_databases
    live = start_server(tmp_path / "live", _node(tmp_path / "live", live_db, tmp_path / "blobs"))
    try:
        live.cli("trust", "add", "ZZA", "--name", "Trust A")
        studies = [f"2.25.{uuid.uuid4().int}" for _ in range(3)]
        files = [_ct(tmp_path / "in", n, uid) for n, uid in enumerate(studies)]
        live.cli("import", str(tmp_path / "in"), "--trust", "ZZA")
        stored = {
            str(pydicom.dcmread(f).SOPInstanceUID): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in files
        }

        # 1. The index, while the node serves; 2. an instance arrives; 3. then the blobs.
        dump = tmp_path / "solent.dump"
        subprocess.run(
            ["pg_dump", "--format=custom", f"--file={dump}", _admin(live_db)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        late = _ct(tmp_path / "late", 9, f"2.25.{uuid.uuid4().int}")
        live.cli("import", str(tmp_path / "late"), "--trust", "ZZA")
        shutil.copytree(tmp_path / "blobs", tmp_path / "blobs-copy")
    finally:
        live.stop()

    subprocess.run(
        ["pg_restore", "--no-owner", f"--dbname={_admin(restored_db)}", str(dump)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    restored_env = _node(tmp_path / "restored", restored_db, tmp_path / "blobs-copy")
    restored = start_server(tmp_path / "restored", restored_env)
    try:
        # Every indexed instance has its blob; the late one is an orphan of the copy (expected).
        code, report = _check(restored)
        assert report["missing_blobs"] == [] and report["size_mismatches"] == []
        assert report["instances"] == len(files)
        assert len(report["orphan_blobs"]) == 1 and code == 1  # type: ignore[arg-type]
        code, report = _check(restored, "--grace", "86400")  # the drill's documented run
        assert code == 0 and report["orphan_blobs"] == [], report
        assert report["young_orphans_ignored"] == 1

        verify = restored.cli("audit", "verify", check=False)
        assert verify.returncode == 0, verify.stdout + verify.stderr

        # The restored node serves what was stored before the dump, byte for byte.
        headers = restored.headers()
        with httpx.Client(base_url=restored.base_url, headers=headers, timeout=60) as http:
            found = http.get("/dicomweb/studies", headers={"Accept": "application/dicom+json"})
            assert found.status_code == 200, found.text
            uids = {s["0020000D"]["Value"][0] for s in found.json()}
            assert uids == set(studies)
            assert str(pydicom.dcmread(late).StudyInstanceUID) not in uids
            for f in files:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
                path = (
                    f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                    f"/instances/{ds.SOPInstanceUID}"
                )
                got = http.get(
                    path, headers={"Accept": 'multipart/related; type="application/dicom"'}
                )
                assert got.status_code == 200, got.text
                assert _part_sha256(got) == stored[str(ds.SOPInstanceUID)]
    finally:
        restored.stop()

    # A failed drill: a blob missing from the copy is reported, by SOP Instance UID.
    lost_sop, lost_sha = next(iter(stored.items()))
    (tmp_path / "blobs-copy" / lost_sha[:2] / lost_sha[2:4] / lost_sha).unlink()
    code, report = _check(restored, "--grace", "86400")
    assert code == 1
    assert report["missing_blobs"] == [
        {"sop_instance_uid": lost_sop, "blob_key": blob_key(lost_sha)}
    ]


def blob_key(sha256: str) -> str:
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


def _part_sha256(response: httpx.Response) -> str:
    """SHA-256 of the one DICOM part of a multipart/related WADO-RS answer."""
    boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    body = response.content
    start = body.index(b"\r\n\r\n", body.index(b"--" + boundary.encode())) + 4
    end = body.index(b"\r\n--" + boundary.encode(), start)
    return hashlib.sha256(body[start:end]).hexdigest()
