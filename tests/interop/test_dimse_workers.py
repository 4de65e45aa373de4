"""Several DIMSE receiving processes on one port (SOLENT_DICOM_WORKERS) against DCMTK.

A series goes in over four parallel storescu associations, which the kernel spreads over the
processes; every instance must be indexed exactly once under the digest of the bytes sent,
come back byte-identical with getscu, and the audit hash chain must still verify although
several processes appended to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import text

from solent.index.sql import Index
from solent.services.retrieve import split_part10
from tests.conftest import SOLENT, RunningServer, require_tool, start_server

pytestmark = pytest.mark.timeout(600)
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
AET = "WORKERSCU"
WORKERS = 3
SLICES = 48


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def write_series(folder: Path) -> tuple[str, str, list[Path]]:
    """A small CT series (64x64, distinct pixels per slice) as Part 10 files."""
    folder.mkdir()
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(7)
    files = []
    for i in range(SLICES):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName = "WORKERS-1", "Workers^Test"
        ds.Modality, ds.InstanceNumber = "CT", i + 1
        ds.Rows = ds.Columns = 64
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = rng.integers(0, 4096, (64, 64), dtype=np.uint16).tobytes()
        path = folder / f"ct{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return study, series, files


def dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    _, offset = split_part10(data)
    return data[offset:]


@pytest.fixture(params=["sqlite", "postgresql"])
def pacs(request: pytest.FixtureRequest, tmp_path: Path) -> RunningServer:
    """A server with several DIMSE workers on the embedded SQLite index, or on PostgreSQL."""
    require_tool("storescu")
    data = tmp_path / "srv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    env["SOLENT_DATA_DIR"] = str(data)
    extra = {"SOLENT_DICOM_WORKERS": str(WORKERS)}
    if request.param == "postgresql":
        extra["SOLENT_DATABASE_URL"] = env["SOLENT_DATABASE_URL"] = request.getfixturevalue(
            "fresh_postgres_url"
        )
    subprocess.run(
        [str(SOLENT), "trust", "add", "ZZA", "--name", "Trust A"],
        env=env,
        check=True,
        capture_output=True,
    )
    srv = start_server(data, extra)
    srv.cli("ae", "add", AET, "--host", "127.0.0.1", "--port", "104", "--trust", "ZZA")
    return srv


def _holders(port: int, assocs: list[Association], pids: list[int]) -> Counter[int]:
    """How many of ``assocs`` each process of ``pids`` serves (/proc/net/tcp names the
    server end of each connection, /proc/<pid>/fd its owner)."""
    mine = {a.dul.socket.socket.getsockname()[1] for a in assocs}  # type: ignore[union-attr]
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    inodes = {
        f"socket:[{r[9]}]"
        for r in rows
        if int(r[1].split(":")[1], 16) == port and int(r[2].split(":")[1], 16) in mine
    }
    held: Counter[int] = Counter()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    held[pid] += 1
    return held


def test_associations_go_round_the_processes(pacs: RunningServer) -> None:
    """Opened one after another, associations are served by each process in turn (the
    processes share one listening socket), not as a hash of the ports falls (SO_REUSEPORT
    gave one process three of four associations)."""
    pids = [pacs.proc.pid, *_children(pacs.proc.pid)]
    port = int(pacs.ports["dicom"])
    ae = AE(ae_title=AET)
    ae.add_requested_context(Verification)
    assocs = []
    try:
        for _ in range(2 * WORKERS):
            assoc = ae.associate("127.0.0.1", port, ae_title="SOLENT")
            assert assoc.is_established
            assocs.append(assoc)
        held = _holders(port, assocs, pids)
        assert sorted(held) == sorted(pids) and set(held.values()) == {2}, held
        assert all(a.send_c_echo().Status == 0 for a in assocs)
    finally:
        for assoc in assocs:
            assoc.release()
        assert pacs.stop() == 0


def test_four_associations_into_several_workers(pacs: RunningServer, tmp_path: Path) -> None:
    try:
        workers = _children(pacs.proc.pid)
        assert len(workers) == WORKERS - 1, f"expected {WORKERS - 1} DIMSE workers: {workers}"
        study, series, files = write_series(tmp_path / "series")
        port = str(pacs.ports["dicom"])

        def store(chunk: list[Path]) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["storescu", "-v", "-aet", AET, "-aec", "SOLENT", "127.0.0.1", port]
                + [str(f) for f in chunk],
                env=DCMTK_ENV,
                capture_output=True,
                text=True,
                timeout=300,
            )

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(store, [files[i::4] for i in range(4)]))
        statuses: list[str] = []
        for result in results:
            assert result.returncode == 0, result.stderr[-800:]
            statuses += re.findall(r"Received Store Response \(([^)]*)\)", result.stderr)
        assert statuses == ["Success"] * SLICES

        # Every instance indexed once, under the digest of exactly the bytes that were sent.
        url = pacs.env.get("SOLENT_DATABASE_URL") or f"sqlite:///{pacs.data_dir / 'solent.db'}"
        index = Index(url)
        try:
            with index.read() as conn:
                rows = conn.execute(
                    text("SELECT sop_instance_uid, sha256, blob_key FROM instance")
                ).all()
                count = conn.execute(
                    text("SELECT num_instances FROM series WHERE series_uid = :s"), {"s": series}
                ).scalar_one()
        finally:
            index.close()
        assert len(rows) == SLICES == len({r[0] for r in rows})
        assert count == SLICES
        blobs = pacs.data_dir / "blobs"
        for _uid, sha256, key in rows:
            assert hashlib.sha256((blobs / key).read_bytes()).hexdigest() == sha256
        sent = {pathlib_uid(f): dataset_bytes(f) for f in files}

        out = tmp_path / "got"
        out.mkdir()
        got = subprocess.run(
            [
                *("getscu", "-S", "-aet", AET, "-aec", "SOLENT", "-od", str(out)),
                *("127.0.0.1", port, "-k", "QueryRetrieveLevel=SERIES"),
                *("-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={series}"),
            ],
            env=DCMTK_ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert got.returncode == 0, got.stderr[-800:]
        received = {pathlib_uid(p): dataset_bytes(p) for p in out.iterdir()}
        assert received.keys() == sent.keys()
        assert all(received[uid] == sent[uid] for uid in sent), "retrieved bytes differ"

        verify = pacs.cli("audit", "verify", "--json")
        report = json.loads(verify.stdout.strip().splitlines()[-1])
        assert report["intact"], report["problems"]
        assert report["records"] >= SLICES
    finally:
        assert pacs.stop() == 0
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "workers outlived serve"


def pathlib_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
