"""SIGKILL of `solent serve` (fast DICOM engine) during 4-association C-STORE loses no
instance that was acknowledged: durable before acknowledged, nothing half-indexed.

Four pynetdicom associations store small CT slices in parallel; after some Success responses
the server is killed. Then every acknowledged instance is in the index with the exact dataset
bytes that were sent, and `solent check` finds no index row without its blob.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from solent.app import build_archive
from solent.protocols.dimse.net import make_ae
from solent.services.retrieve import split_part10
from solent.settings import load_settings
from tests.conftest import SOLENT, start_server
from tests.contract.synthetic import Written, new_uid, write_instance

FILES = 160
KILL_AFTER = 40
AET = "CRASHSCU"


def _generate(folder: Path) -> list[Written]:
    study, series = new_uid(), new_uid()
    return [
        write_instance(
            folder / f"{n:04d}.dcm",
            patient_id="CRASHDIMSE",
            study_uid=study,
            series_uid=series,
            seed=n,
            size=32,
        )
        for n in range(FILES)
    ]


def test_sigkill_during_four_association_ingest_loses_no_acknowledged_instance(
    tmp_path: Path,
) -> None:
    written = _generate(tmp_path / "in")
    data = tmp_path / "srv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    env["SOLENT_DATA_DIR"] = str(data)
    subprocess.run(
        [str(SOLENT), "trust", "add", "ZZA", "--name", "Trust A"],
        env=env,
        check=True,
        capture_output=True,
    )
    srv = start_server(data, {"SOLENT_DICOM_ENGINE": "fast", "SOLENT_DICOM_WORKERS": "1"})
    srv.cli("ae", "add", AET, "--host", "127.0.0.1", "--port", "104", "--trust", "ZZA")
    port = int(srv.ports["dicom"])
    acknowledged: list[str] = []
    lock = threading.Lock()
    killed = threading.Event()

    def send(part: list[Written]) -> None:
        ae = make_ae(AET)
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
        assoc = ae.associate("127.0.0.1", port, ae_title="SOLENT")
        if not assoc.is_established:
            return
        for w in part:
            try:
                rsp = assoc.send_c_store(w.path)
            except Exception:
                return
            if not assoc.is_established or "Status" not in rsp:
                return
            if rsp.Status == 0:
                with lock:
                    acknowledged.append(w.sop_instance_uid)
                    if len(acknowledged) >= KILL_AFTER and not killed.is_set():
                        killed.set()
                        srv.proc.send_signal(signal.SIGKILL)
        assoc.release()

    threads = [threading.Thread(target=send, args=(written[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert killed.is_set(), "every instance was stored before the kill"
    assert srv.proc.wait(timeout=30) == -signal.SIGKILL
    assert KILL_AFTER <= len(acknowledged) < FILES

    by_uid = {w.sop_instance_uid: w for w in written}
    archive = build_archive(load_settings(environ={"SOLENT_DATA_DIR": str(data)}))
    try:
        for uid in acknowledged:
            digest = archive.index.instance_digest(uid)
            assert digest is not None, f"acknowledged but not indexed: {uid}"
            with archive.store.open(digest[1]) as fp:
                stored = fp.read()
            sent = by_uid[uid].path.read_bytes()
            assert stored[split_part10(stored)[1] :] == sent[split_part10(sent)[1] :]
    finally:
        archive.close()
    done = srv.cli("check", "--json", check=False)
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["missing_blobs"] == [] and report["size_mismatches"] == []
    assert report["instances"] >= len(acknowledged)
