"""Records retention over the network (R43, R44): a modality or retention engine sends an IOCM
note titled 113039 "Data Retention Policy Expired" with DCMTK's storescu to a running
`solent serve`. The C-STORE answers Warning B000 with an Error Comment saying why nothing was
withdrawn yet (awaiting a second person's approval, or under legal hold); a records manager
then approves the deletion over the JSON API and the instances leave QIDO."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from tests.conftest import SOLENT, RunningServer, require_tool, start_server
from tests.unit.stow_support import ct_instance, rejection_note

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
PASSWORD = "correct horse battery staple"
EXPIRED = {"code": "113039", "meaning": "Data Retention Policy Expired"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    require_tool("storescu")
    data = tmp_path / "srv"
    base = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    subprocess.run(
        [str(SOLENT), "trust", "add", "ZZA", "--name", "Trust A"],
        env={**base, "SOLENT_DATA_DIR": str(data)},
        check=True,
        capture_output=True,
    )
    srv = start_server(data)
    try:
        srv.cli("ae", "add", "RET_ZZA", "--host", "127.0.0.1", "--port", "104", "--trust", "ZZA")
        yield srv
    finally:
        srv.stop()


def bearer(srv: RunningServer, name: str, role: str) -> dict[str, str]:
    srv.cli("user", "add", name, "--trust", "ZZA", "--password", PASSWORD, "--role", role)
    token = srv.cli("token", "create", "--user", name).stdout.strip().splitlines()[-1]
    return {"Authorization": f"Bearer {token}"}


def storescu(srv: RunningServer, *files: Path) -> str:
    done = subprocess.run(
        ["storescu", "-d", "-aet", "RET_ZZA", "-aec", "SOLENT", "127.0.0.1",
         str(srv.ports["dicom"]), *map(str, files)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def instances(srv: RunningServer, headers: dict[str, str], study: str) -> set[str]:
    r = httpx.get(f"{srv.base_url}/dicomweb/studies/{study}/instances", headers=headers, timeout=30)
    if r.status_code == 204:
        return set()
    assert r.status_code == 200, r.text
    return {row["00080018"]["Value"][0] for row in r.json()}


def test_a_retention_note_over_c_store_is_a_warning_until_approved(
    server: RunningServer, tmp_path: Path
) -> None:
    srv = server
    reader = bearer(srv, "dr.ret", "radiologist")
    manager = bearer(srv, "rm.ret", "records_manager")
    study, held_study, series, held_series = (generate_uid() for _ in range(4))
    sops = [generate_uid(), generate_uid()]
    files = []
    for sop in sops:
        files.append(tmp_path / f"{sop}.dcm")
        files[-1].write_bytes(ct_instance("R9001", "ZZA", study, series=series, sop=sop))
    held_sop = generate_uid()
    files.append(tmp_path / "held.dcm")
    files[-1].write_bytes(ct_instance("R9002", "ZZA", held_study, series=held_series, sop=held_sop))
    storescu(srv, *files)
    assert instances(srv, reader, study) == set(sops)

    note, note_uid = rejection_note("R9001", "ZZA", study, {series: sops[:1]}, **EXPIRED)
    (tmp_path / "note.dcm").write_bytes(note)
    out = storescu(srv, tmp_path / "note.dcm")
    assert re.search(r"DIMSE Status\s*: 0xb000: Warning", out), out
    assert "(0000,0902) LO [retention deletion 1 awaits approval; nothing withdrawn yet" in out
    assert sops[0] in instances(srv, reader, study)  # the note is stored, nothing withdrawn

    (pending,) = httpx.get(
        f"{srv.base_url}/api/retention-deletions", headers=manager, timeout=30
    ).json()
    assert pending["requested_by"] == "node:RET_ZZA@ZZA" and pending["note_uid"] == note_uid
    approved = httpx.post(
        f"{srv.base_url}/api/retention-deletions/{pending['id']}/approve",
        headers=manager,
        timeout=30,
    )
    assert approved.status_code == 200, approved.text
    assert instances(srv, reader, study) == {sops[1], note_uid}

    hold = {"reason": "Complaint", "reference": "PALS-3", "targets": [
        {"issuer": "ZZA", "patient_id": "R9002"}]}  # fmt: skip
    placed = httpx.post(f"{srv.base_url}/api/legal-holds", json=hold, headers=manager, timeout=30)
    assert placed.status_code == 201, placed.text
    refs = {held_series: [held_sop]}
    held_note, _ = rejection_note("R9002", "ZZA", held_study, refs, **EXPIRED)
    (tmp_path / "held-note.dcm").write_bytes(held_note)
    out = storescu(srv, tmp_path / "held-note.dcm")
    assert re.search(r"DIMSE Status\s*: 0xb000: Warning", out), out
    assert "(0000,0902) LO [legal hold: note stored, nothing withdrawn (R43)]" in out, out
    assert held_sop in instances(srv, reader, held_study)
