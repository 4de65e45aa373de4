"""A large instance costs bounded memory both ways: storescu sends a ~300 MB instance to a real
`solent serve` (spooled to disk as it arrives), then movescu has it C-MOVEd back (streamed from
storage on the sub-association), and the server's peak resident memory barely moves."""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import SOLENT, RunningServer, require_tool, start_server

pytestmark = pytest.mark.timeout(600)
AET = "BIGSCU"
ROWS = COLUMNS = 512
FRAMES = 600  # 512 x 512 x 2 bytes x 600 = 314,572,800 bytes of pixel data
PIXEL_BYTES = ROWS * COLUMNS * 2 * FRAMES
MIB = 1 << 20


def write_large_instance(path: Path) -> Dataset:
    """A multi-frame 16-bit secondary capture, its pixel data written in 8 MiB chunks (the test
    itself never holds the instance in memory either)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Word SC
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = "BIG1"
    ds.PatientName = "LARGE^INSTANCE"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = "20260101"
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = FRAMES
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.save_as(path, enforce_file_format=True)
    chunk = bytes(range(256)) * (8 * MIB // 256)
    with path.open("ab") as fp:
        fp.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, PIXEL_BYTES))
        left = PIXEL_BYTES
        while left:
            n = min(left, len(chunk))
            fp.write(chunk[:n])
            left -= n
    return ds


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (receiving worker processes, if the server forks any)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found.extend(_tree(int(child)))
    return found


def peak_rss(pid: int) -> int:
    """VmHWM: the process's peak resident set size so far, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[RunningServer]:
    require_tool("storescu")
    require_tool("movescu")
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc")
    data = tmp_path / "srv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    env["SOLENT_DATA_DIR"] = str(data)
    subprocess.run(
        [str(SOLENT), "trust", "add", "ZZA", "--name", "Trust A"],
        env=env,
        check=True,
        capture_output=True,
    )
    srv = start_server(data)
    srv.cli("ae", "add", AET, "--host", "127.0.0.1", "--port", "104", "--trust", "ZZA")
    yield srv
    srv.stop()


def test_large_c_store_streams_to_disk(pacs: RunningServer, tmp_path: Path) -> None:
    path = tmp_path / "large.dcm"
    write_large_instance(path)
    assert path.stat().st_size > PIXEL_BYTES
    # Warm the server up (imports, first association) so the baseline is its working size.
    small = tmp_path / "small.dcm"
    warm = pydicom.dcmread(path, stop_before_pixels=True)
    warm.SOPInstanceUID = warm.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    warm.save_as(small, enforce_file_format=True)
    env = {**os.environ, "TCP_NODELAY": "1"}
    port = str(pacs.ports["dicom"])
    base = ["storescu", "-v", "-aet", AET, "-aec", "SOLENT", "127.0.0.1", port]
    first = subprocess.run([*base, str(small)], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    before = {pid: peak_rss(pid) for pid in _tree(pacs.proc.pid)}

    sent = subprocess.run([*base, str(path)], env=env, capture_output=True, text=True, timeout=300)
    out = sent.stdout + sent.stderr
    assert re.findall(r"Received Store Response \(([^)]*)\)", out) == ["Success"], out

    growth = {
        pid: peak_rss(pid) - hwm for pid, hwm in before.items() if Path(f"/proc/{pid}").exists()
    }
    assert growth, "the server process is gone"
    worst = max(growth.values())
    print(
        f"server peak RSS growth: {worst / MIB:.1f} MiB for {PIXEL_BYTES / MIB:.0f} MiB of pixels"
    )
    assert worst < 150 * MIB, (
        f"peak RSS grew by {worst / MIB:.0f} MiB for a {PIXEL_BYTES / MIB:.0f} MiB instance"
    )
    # Stored whole: the blob has the full size and the server still answers.
    stored = [
        p for p in (pacs.data_dir).rglob("*") if p.is_file() and p.stat().st_size >= PIXEL_BYTES
    ]
    assert stored, "no blob of the instance's size in the data directory"
    again = subprocess.run(["echoscu", "-aet", AET, "-aec", "SOLENT", "127.0.0.1", port], env=env)
    assert again.returncode == 0

    # C-MOVE it back: movescu is the destination too (it receives, --ignore: stores nothing).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dest_port = probe.getsockname()[1]
    pacs.cli("ae", "add", "BIGDEST", "--host", "127.0.0.1", "--port", str(dest_port),
             "--trust", "ZZA", "--allow", "store")  # fmt: skip
    before = {pid: peak_rss(pid) for pid in _tree(pacs.proc.pid)}
    moved = subprocess.run(
        ["movescu", "-v", "-S", "-aet", AET, "-aec", "SOLENT", "-aem", "BIGDEST",
         "--port", str(dest_port), "--ignore", "127.0.0.1", port,
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={warm.StudyInstanceUID}"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = moved.stdout + moved.stderr
    assert moved.returncode == 0, out
    assert re.search(r"Received Final Move Response \(Success\)", out), out
    # Both instances of the study (the warm-up one and the large one) arrived.
    assert len(re.findall(r"Received Store Request", out)) == 2, out
    growth = {
        pid: peak_rss(pid) - hwm for pid, hwm in before.items() if Path(f"/proc/{pid}").exists()
    }
    worst = max(growth.values())
    print(f"server peak RSS growth during C-MOVE: {worst / MIB:.1f} MiB")
    assert worst < 150 * MIB, (
        f"C-MOVE of a {PIXEL_BYTES / MIB:.0f} MiB instance grew RSS by {worst / MIB:.0f} MiB"
    )
