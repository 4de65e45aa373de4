"""Stateless nodes: one process imports into PostgreSQL + S3, another serves what it stored.

Three OS processes share nothing but the database and the bucket (each has its own, empty data
directory): `solent import`, a running `solent serve`, and `solent check` (the test process
itself only registers the trust). The S3 side is a
moto server over real HTTP; the bucket does not exist until the first node starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx

from solent.app import build_archive
from solent.settings import load_settings
from tests.conftest import SOLENT, S3Server, start_server
from tests.contract.synthetic import Written, new_uid, write_instance


def run_solent(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SOLENT), *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def node_env(data_dir: Path, shared: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    env.update(shared, SOLENT_DATA_DIR=str(data_dir))
    return env


def test_import_in_one_process_is_served_by_another(
    tmp_path: Path, fresh_postgres_url: str, s3_env: dict[str, str], s3_server: S3Server
) -> None:
    # Nodes sharing one archive share its audit key, like its index and store (security.md).
    shared = {
        "SOLENT_DATABASE_URL": fresh_postgres_url,
        "SOLENT_AUDIT_KEY": "the region's audit key, from a secret store",
        **s3_env,
    }
    admin = build_archive(load_settings(environ=shared, data_dir=tmp_path / "admin-node"))
    admin.index.add_trust("ZZA", "Trust A")
    admin.close()

    # The serving node starts first, on the empty shared state, and must see later imports.
    server = start_server(tmp_path / "server-node", extra_env=shared)
    try:
        api = httpx.Client(base_url=server.base_url, headers=server.headers(), timeout=30)
        assert api.get("/api/stats").json()["instances"] == 0

        study_a, ct, mr = new_uid(), new_uid(), new_uid()
        study_b, series_b = new_uid(), new_uid()
        files: list[Written] = [
            write_instance(
                tmp_path / "in" / f"ct{i}.dcm", patient_id="H1", study_uid=study_a, series_uid=ct
            )
            for i in range(3)
        ]
        files += [
            write_instance(
                tmp_path / "in" / f"mr{i}.dcm",
                patient_id="H1",
                study_uid=study_a,
                series_uid=mr,
                modality="MR",
                seed=100 + i,
            )
            for i in range(2)
        ]
        files += [
            write_instance(
                tmp_path / "in" / f"b{i}.dcm",
                patient_id="H2",
                study_uid=study_b,
                series_uid=series_b,
                seed=200 + i,
            )
            for i in range(2)
        ]
        importer = node_env(tmp_path / "importer-node", shared)
        done = run_solent(importer, "import", str(tmp_path / "in"), "--trust", "ZZA", "--json")
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert len(summary["stored"]) == 7 and summary["rejected"] == []

        stats = api.get("/api/stats").json()
        assert {k: stats[k] for k in ("patients", "studies", "series", "instances")} == {
            "patients": 2,
            "studies": 2,
            "series": 3,
            "instances": 7,
        }
        assert stats["bytes"] == sum(w.size for w in files)
        listed = api.get("/api/studies")
        assert listed.status_code == 200, listed.text
        studies: dict[str, dict[str, Any]] = {s["study_uid"]: s for s in listed.json()}
        assert set(studies) == {study_a, study_b}
        a, b = studies[study_a], studies[study_b]
        assert (a["issuer"], a["local_id"], a["num_series"], a["num_instances"]) == (
            "ZZA",
            "H1",
            2,
            5,
        )
        assert sorted(a["modalities"].split("\\")) == ["CT", "MR"]
        assert (b["issuer"], b["local_id"], b["num_series"], b["num_instances"]) == (
            "ZZA",
            "H2",
            1,
            2,
        )
    finally:
        assert server.stop() == 0

    # The bytes are in the bucket, as sent, under content keys only.
    bucket, _, prefix = s3_env["SOLENT_STORAGE_URL"][len("s3://") :].partition("/")
    client = s3_server.client()
    objects = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert all(o["Key"].startswith(prefix + "/") for o in objects)
    stored_digests = {
        hashlib.sha256(client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()).hexdigest()
        for o in objects
    }
    assert stored_digests == {w.sha256 for w in files}
    # Nothing of the archive went to the nodes' local disks.
    for node in ("importer-node", "server-node"):
        assert not (tmp_path / node / "blobs").exists()

    # A third process, on yet another node, finds the shared archive consistent.
    done = run_solent(node_env(tmp_path / "checker-node", shared), "check", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["clean"] is True
    assert (report["instances"], report["blobs"]) == (7, 7)
