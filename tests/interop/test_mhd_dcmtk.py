"""The MHD manifest (ITI-68) as a DICOM toolkit reads it: DCMTK's dsrdump parses the Key
Object Selection Document and its content tree without an error."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from solent.app import Archive
from solent.demo import ALICE
from solent.protocols.http import create_app
from tests.conftest import require_tool
from tests.unit.security_fixtures import add_user, demo, demo_template

__all__ = ["demo", "demo_template"]


@pytest.fixture
def zza(demo: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(demo), headers=add_user(demo, "dr-dsr", "ZZA", "clinician")) as c:
        yield c


def test_dsrdump_reads_every_manifest(zza: TestClient, tmp_path: Path) -> None:
    dsrdump = require_tool("dsrdump")
    found = zza.get(
        "/fhir/DocumentReference",
        params={"patient.identifier": f"https://fhir.nhs.uk/Id/nhs-number|{ALICE}"},
    ).json()
    assert found["entry"]
    for entry in found["entry"]:
        url = entry["resource"]["content"][0]["attachment"]["url"]
        r = zza.get(url, headers={"Accept": "application/dicom"})
        assert r.status_code == 200
        path = tmp_path / f"{entry['resource']['id']}.dcm"
        path.write_bytes(r.content)
        done = subprocess.run([dsrdump, "-v", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "Key Object Selection Document" in done.stdout
        assert '"Manifest"' in done.stdout
        assert not [line for line in done.stderr.splitlines() if line.startswith("E:")]
        study = zza.get(entry["resource"]["content"][1]["attachment"]["url"]).json()
        assert done.stdout.count("<contains ") == study["numberOfInstances"]
