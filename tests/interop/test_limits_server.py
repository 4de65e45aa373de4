"""Hostile input against a real `solent serve` (issue 11 part 5): a deflate bomb by STOW-RS,
C-STORE and import with the server's memory measured from /proc, floods of silent connections
on the DICOM, MLLP and HTTP ports while a real peer still gets through, oversized headers.

Every loop is bounded in count and time; everything listens on loopback only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from solent.index.sql import Index
from solent.settings import load_settings
from tests.conftest import SOLENT, RunningServer, require, start_server
from tests.deflate_files import write_bomb, write_deflated

pytestmark = pytest.mark.timeout(300)
AET = "LIMITSCU"
ARTIM = 2.0
HL7_IDLE = 2.0
HTTP_HEAD_TIMEOUT = 2.0
HTTP_STALL_TIMEOUT = 2.0
MAX_ASSOCIATIONS = 2
MAX_PENDING = 8
HL7_MAX = 4
HTTP_MAX = 20


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) in KiB and Threads of a process, from /proc."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux /proc to measure the server")
    data = tmp_path_factory.mktemp("limits") / "srv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    env["SOLENT_DATA_DIR"] = str(data)
    subprocess.run(
        [str(SOLENT), "trust", "add", "ZZA", "--name", "Trust A"],
        env=env,
        check=True,
        capture_output=True,
    )
    server = start_server(
        data,
        {
            "SOLENT_DICOM_WORKERS": "1",  # one receiving process: the one measured
            "SOLENT_DICOM_MAX_ASSOCIATIONS": str(MAX_ASSOCIATIONS),
            "SOLENT_DICOM_MAX_PENDING_CONNECTIONS": str(MAX_PENDING),
            "SOLENT_DICOM_ARTIM_TIMEOUT_SECONDS": str(ARTIM),
            "SOLENT_HL7_MAX_CONNECTIONS": str(HL7_MAX),
            "SOLENT_HL7_IDLE_TIMEOUT_SECONDS": str(HL7_IDLE),
            "SOLENT_HTTP_MAX_HEADER_BYTES": "8192",
            "SOLENT_HTTP_HEADER_TIMEOUT_SECONDS": str(HTTP_HEAD_TIMEOUT),
            "SOLENT_HTTP_STALL_TIMEOUT_SECONDS": str(HTTP_STALL_TIMEOUT),
            "SOLENT_HTTP_MAX_CONNECTIONS": str(HTTP_MAX),
        },
    )
    server.cli("ae", "add", AET, "--host", "127.0.0.1", "--port", "104", "--trust", "ZZA")
    server.cli("hl7", "sender", "add", "PAS", "ZZA", "--host", "127.0.0.1", "--trust", "ZZA")
    yield server
    server.stop()


def dcmtk_tool(name: str) -> str:
    """DCMTK's program, not pynetdicom's console script of the same name in the venv."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    found = shutil.which(name, path=path)
    require(found is not None, f"DCMTK's `{name}` program")
    assert found is not None
    return found


def silent_sockets(port: int, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
        socks.append(s)
    return socks


def closed_by_server(s: socket.socket, within: float) -> bool:
    """True when the server closes ``s`` (EOF or reset) within ``within`` seconds."""
    s.settimeout(within)
    try:
        return s.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


# --- deflate bomb -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.dcm"
    size = write_bomb(path, inflated=1 << 30)
    assert size < 2 << 20  # about 1 MiB on disk for 1 GiB inflated
    return path


def stow(srv: RunningServer, data: bytes) -> httpx.Response:
    boundary = "solent-limits"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return httpx.post(
        srv.base_url + "/dicomweb/studies",
        content=body,
        headers={
            **srv.headers(),
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
        timeout=120,
    )


def c_store(srv: RunningServer, path: Path, sop_class: str) -> tuple[int, str]:
    """C-STORE of a deflated file sent as it is (pynetdicom sends a path without decoding)."""
    from pynetdicom import AE

    ae = AE(ae_title=AET)
    ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1.99"])
    assoc = ae.associate("127.0.0.1", int(srv.ports["dicom"]), ae_title="SOLENT")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(rsp.Status), str(rsp.get("ErrorComment", ""))


def test_deflate_bomb_is_refused_everywhere_and_memory_stays_flat(
    srv: RunningServer, bomb: Path, tmp_path: Path
) -> None:
    pid = srv.proc.pid
    # Warm the paths once with a well-formed deflated instance, so the figure is the bomb's.
    ok = tmp_path / "ok.dcm"
    write_deflated(ok, patient_id="DFL-WARM")
    assert stow(srv, ok.read_bytes()).status_code == 200
    before = proc_status(pid)

    # STOW-RS: the part fails with Out of Resources (A700) and a readable reason; 409.
    rsp = stow(srv, bomb.read_bytes())
    assert rsp.status_code == 409, rsp.text
    (failed,) = rsp.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA700]
    assert "inflates beyond" in failed["00000902"]["Value"][0]

    # C-STORE: a DICOM failure status with the reason in the Error Comment.
    status, comment = c_store(srv, bomb, "1.2.840.10008.5.1.4.1.1.104.1")
    assert status == 0xA700 and "inflates beyond" in comment, (hex(status), comment)

    # solent import: a reject that says why.
    imported = srv.cli(
        "import", str(bomb), "--trust", "ZZA", "--jsonl", "--no-progress", check=False
    )
    assert imported.returncode != 0  # a rejected file fails the import
    lines = [json.loads(x) for x in imported.stdout.splitlines() if x.startswith("{")]
    assert any("inflates beyond" in json.dumps(x) for x in lines), imported.stdout

    after = proc_status(pid)
    grown_kib = after["VmHWM"] - before["VmHWM"]
    print(
        f"deflate bomb (1 GiB inflated, {bomb.stat().st_size} bytes on disk) by STOW-RS and "
        f"C-STORE: server peak RSS {before['VmHWM'] // 1024} -> {after['VmHWM'] // 1024} MiB "
        f"(+{grown_kib // 1024} MiB), RSS {before['VmRSS'] // 1024} -> "
        f"{after['VmRSS'] // 1024} MiB"
    )
    assert grown_kib < 64 * 1024, f"the server's peak memory grew {grown_kib} KiB"
    # Nothing of the bomb was stored.
    settings = load_settings(environ=srv.env)
    index = Index(settings.effective_database_url)
    try:
        assert index.stats()["instances"] == 1  # the warm-up instance only
    finally:
        index.close()


def test_deflated_c_store_from_dcmtk_is_stored_as_sent(srv: RunningServer, tmp_path: Path) -> None:
    storescu = dcmtk_tool("storescu")
    ok = tmp_path / "ok.dcm"
    ds = write_deflated(ok, patient_id="DFL-DCMTK")
    port = str(srv.ports["dicom"])
    out = subprocess.run(
        [storescu, "-v", "-xd", "-aet", AET, "-aec", "SOLENT", "127.0.0.1", port, str(ok)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    log = out.stdout + out.stderr
    assert "Deflated Explicit VR Little Endian -> Deflated Explicit VR Little Endian" in log, log
    assert "Received Store Response (Success)" in log, log
    settings = load_settings(environ=srv.env)
    index = Index(settings.effective_database_url)
    try:
        digest = index.instance_digest(ds.SOPInstanceUID)
    finally:
        index.close()
    assert digest is not None
    stored = next((settings.data_dir / "blobs").rglob(digest[0]))
    # Kept deflated as received (DCMTK re-deflates, so compare what it carries).
    assert pydicom.dcmread(stored).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    assert pydicom.dcmread(stored).PixelData == pydicom.dcmread(ok).PixelData


# --- DIMSE: silent connections, ARTIM, association slots ----------------------------------


def echo(srv: RunningServer) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            dcmtk_tool("echoscu"),
            "-aet",
            AET,
            "-aec",
            "SOLENT",
            "127.0.0.1",
            str(srv.ports["dicom"]),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_dimse_flood_of_silent_connections_does_not_block_a_modality(srv: RunningServer) -> None:
    dcmtk_tool("echoscu")
    pid = srv.proc.pid
    port = int(srv.ports["dicom"])
    threads_before = proc_status(pid)["Threads"]
    flood = silent_sockets(port, 60)  # far more than slots (2) and pending places (8)
    try:
        time.sleep(0.5)
        # A real modality associates and echoes at once, despite the flood.
        started = time.monotonic()
        result = echo(srv)
        assert result.returncode == 0, result.stdout + result.stderr
        assert time.monotonic() - started < 5
        # The server held at most MAX_PENDING of the silent sockets: the rest were closed.
        alive = [s for s in flood if not closed_by_server(s, 0.05)]
        assert len(alive) <= MAX_PENDING
        # The threads of the dropped connections end within the ARTIM timeout: what stays is
        # bounded by the pending places (an association and its reactor thread each).
        bound = threads_before + 2 * MAX_PENDING + 4
        deadline = time.monotonic() + ARTIM * 3
        while proc_status(pid)["Threads"] > bound and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc_status(pid)["Threads"] <= bound, (threads_before, proc_status(pid))
        # ARTIM: the survivors are closed once it expires, without a byte from them.
        assert all(closed_by_server(s, ARTIM * 3) for s in alive)
    finally:
        close_all(flood)


def test_dimse_half_sent_pdu_is_dropped_by_artim(srv: RunningServer) -> None:
    """A peer that sends part of an A-ASSOCIATE-RQ header and stalls (pynetdicom would block
    in recv for ever) is closed by the ARTIM timer too."""
    (s,) = silent_sockets(int(srv.ports["dicom"]), 1)
    try:
        s.sendall(b"\x01\x00\x00")
        started = time.monotonic()
        assert closed_by_server(s, ARTIM * 4)
        assert time.monotonic() - started >= ARTIM * 0.5
    finally:
        s.close()


def test_oversized_associate_request_is_refused_unread(srv: RunningServer) -> None:
    """An A-ASSOCIATE-RQ header claiming 2 GiB: the server closes the connection instead of
    reading it into memory, long before the ARTIM timer."""
    (s,) = silent_sockets(int(srv.ports["dicom"]), 1)
    try:
        s.sendall(b"\x01\x00" + (0x7FFFFFFF).to_bytes(4, "big"))
        started = time.monotonic()
        sent = 0
        with contextlib.suppress(OSError):
            while sent < 64 << 20 and time.monotonic() - started < ARTIM:
                sent += s.send(bytes(1 << 16))
        assert closed_by_server(s, ARTIM)
        assert time.monotonic() - started < ARTIM / 2  # not the ARTIM timer: the size check
    finally:
        s.close()


def answered_association(ae: Any, port: int, within: float = 60) -> Any:
    """Ask for an association until the server answers it (accepted or rejected).

    Under load the request can go unanswered: the server's ARTIM timer (2 s here) drops a
    connection whose A-ASSOCIATE-RQ it has not read in time, which is that timer doing its job,
    not an answer. Such a connection never holds a slot, so asking again proves the same thing.
    """
    deadline = time.monotonic() + within
    while True:
        assoc = ae.associate("127.0.0.1", port, ae_title="SOLENT")
        if assoc.is_established or assoc.is_rejected or time.monotonic() > deadline:
            return assoc
        time.sleep(0.1)


def test_association_slots_are_bounded_and_freed(srv: RunningServer) -> None:
    from pynetdicom import AE

    port = int(srv.ports["dicom"])
    stranger = AE(ae_title="NOTREGISTERED")
    stranger.add_requested_context("1.2.840.10008.1.1")
    for _ in range(MAX_ASSOCIATIONS + 2):  # rejected associations give their slot back
        assert answered_association(stranger, port).is_rejected
    ae = AE(ae_title=AET)
    ae.add_requested_context("1.2.840.10008.1.1")
    held = [answered_association(ae, port) for _ in range(MAX_ASSOCIATIONS)]
    try:
        assert all(a.is_established for a in held)
        extra = answered_association(ae, port)
        assert not extra.is_established, "an association beyond the limit was accepted"
        assert extra.is_rejected, "aborted" if extra.is_aborted else "no answer"
        # A-ASSOCIATE-RJ transient, service-provider (presentation), local limit exceeded.
        rj = extra.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
    finally:
        for a in held:
            a.release()
    deadline = time.monotonic() + 60
    while True:  # slots are given back when the released connections close
        again = answered_association(ae, port)
        if again.is_established or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert again.is_established
    assert again.send_c_echo().Status == 0
    again.release()


# --- HL7 MLLP -----------------------------------------------------------------------------

ADT = (
    "MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250320093000||ADT^A08^ADT_A01|{cid}|P|2.4\r"
    "EVN|A08|20250320093000\r"
    "PID|1||LIM-{cid}^^^ZZA^MR||LIMIT^TEST||19700101|F\r"
    "PV1|1|N\r"
)


def mllp(port: int, message: str, source: str = "127.0.0.1") -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0)) as s:
        s.sendall(b"\x0b" + message.encode() + b"\x1c\r")
        ack = b""
        deadline = time.monotonic() + 15
        while b"\x1c\r" not in ack and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            ack += chunk
    return ack.decode("utf-8", "replace")


def test_mllp_unregistered_address_is_closed_before_reading(srv: RunningServer) -> None:
    port = int(srv.ports["hl7"])
    # 127.0.0.2 is this machine too (loopback /8), but no sender is registered there.
    assert mllp(port, ADT.format(cid="FOREIGN-1"), source="127.0.0.2") == ""
    ack = mllp(port, ADT.format(cid="HOME-1"))
    assert "MSA|" in ack and "HOME-1" in ack, ack
    journal = json.loads(srv.cli("hl7", "messages", "--json").stdout)
    assert "FOREIGN-1" not in {m["control_id"] for m in journal}


def test_mllp_flood_is_bounded_and_idle_sockets_are_closed(srv: RunningServer) -> None:
    port = int(srv.ports["hl7"])
    flood = silent_sockets(port, HL7_MAX + 6)
    try:
        time.sleep(0.3)
        refused = [s for s in flood if closed_by_server(s, 0.2)]
        assert len(refused) >= 6  # connections beyond hl7_max_connections closed at once
        idle = [s for s in flood if s not in refused]
        assert len(idle) <= HL7_MAX
        assert all(closed_by_server(s, HL7_IDLE * 3) for s in idle)  # the idle timeout
    finally:
        close_all(flood)
    ack = mllp(port, ADT.format(cid="AFTER-FLOOD"))
    assert "MSA|" in ack and "AFTER-FLOOD" in ack, ack


# --- HTTP -------------------------------------------------------------------------------


def raw_http(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        out = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                out += chunk
    return out


def test_oversized_header_is_431_and_the_server_keeps_serving(srv: RunningServer) -> None:
    port = int(srv.ports["http"])
    big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    assert raw_http(port, big).startswith(b"HTTP/1.1 431 ")
    many = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: 0123456789\r\n" * 1000 + b"\r\n"
    assert raw_http(port, many).startswith(b"HTTP/1.1 431 ")
    # A header line that never ends is cut off too, not buffered without limit.
    endless = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"b" * 20000
    assert raw_http(port, endless).startswith(b"HTTP/1.1 431 ")
    # A body larger than the head limit, arriving in the same packet as the head, is no head.
    post = (
        b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 20000\r\nConnection: close\r\n\r\n" + b" " * 20000
    )
    answer = raw_http(port, post)
    assert answer.startswith(b"HTTP/1.1 ") and b" 431 " not in answer[:20], answer[:200]
    # An ordinary large header (a long bearer token) is fine, and the server still serves.
    ok = httpx.get(srv.base_url + "/health", headers={"X-Pad": "p" * 6000}, timeout=10)
    assert ok.status_code == 200


def test_http_silent_connections_are_bounded_and_closed(srv: RunningServer) -> None:
    port = int(srv.ports["http"])
    flood = silent_sockets(port, HTTP_MAX + 5)
    try:
        time.sleep(0.3)
        # Over http_max_connections: a request is answered 503, not queued without limit.
        busy = httpx.get(srv.base_url + "/health", timeout=10)
        assert busy.status_code == 503
        # The silent ones are closed when their head timeout expires...
        assert all(closed_by_server(s, HTTP_HEAD_TIMEOUT * 3) for s in flood)
    finally:
        close_all(flood)
    # ... and the server answers again.
    assert httpx.get(srv.base_url + "/health", timeout=10).status_code == 200


def _stow_head(srv: RunningServer, length: int) -> bytes:
    auth = srv.headers()["Authorization"]
    return (
        "POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        'Content-Type: multipart/related; type="application/dicom"; boundary=stall\r\n'
        f"Content-Length: {length}\r\nAuthorization: {auth}\r\n\r\n"
    ).encode()


def _eof_within(s: socket.socket, seconds: float) -> bool:
    """True when the server closes ``s`` within ``seconds``, whatever it answered first."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            if s.recv(65536) == b"":
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def _instances(srv: RunningServer) -> int:
    r = httpx.get(srv.base_url + "/dicomweb/instances", headers=srv.headers(), timeout=30)
    assert r.status_code == 200, r.text
    return len(r.json())


def test_http_stalled_request_bodies_are_closed(srv: RunningServer) -> None:
    """An authenticated client that sends a STOW-RS head and part of its body, then nothing,
    held its connection (and a slot of http_max_connections) for ever: enough of them and
    every request was a 503. Now each is closed after the stall timeout, nothing is stored,
    no spooled part is left behind, and the server answers again."""
    before = _instances(srv)
    port = int(srv.ports["http"])
    stalled = []
    for _ in range(HTTP_MAX + 2):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(
            _stow_head(srv, 1 << 20) + b"--stall\r\nContent-Type: application/dicom\r\n\r\nDICM"
        )
        stalled.append(s)
    try:
        time.sleep(0.5)
        assert httpx.get(srv.base_url + "/health", timeout=10).status_code == 503
        # (those over the limit were answered 503 first: read up to the end)
        assert all(_eof_within(s, HTTP_STALL_TIMEOUT * 4) for s in stalled)
    finally:
        close_all(stalled)
    assert httpx.get(srv.base_url + "/health", timeout=10).status_code == 200
    assert _instances(srv) == before
    tmp = srv.data_dir / "tmp"
    deadline = time.monotonic() + 10
    while tmp.is_dir() and list(tmp.glob("stow-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (tmp.is_dir() and list(tmp.glob("stow-*")))


def test_http_body_sent_slowly_but_steadily_is_not_cut(srv: RunningServer) -> None:
    """The stall timer counts silence, not duration: a body trickled in pieces, each within
    the timeout, is read to the end and answered."""
    port = int(srv.ports["http"])
    body = b"--stall\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n--stall--\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(_stow_head(srv, len(body)))
        for at in range(0, len(body), len(body) // 4 + 1):
            time.sleep(HTTP_STALL_TIMEOUT * 0.6)
            s.sendall(body[at : at + len(body) // 4 + 1])
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"not a DICOM file" in answer


def test_http_response_not_read_is_aborted(srv: RunningServer, tmp_path: Path) -> None:
    """A client that asks for a large instance and never reads it held the connection and
    the streaming thread for ever; the server aborts it after the stall timeout."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), "1.2.3.4.5"
    ds.PatientID, ds.PatientName, ds.Modality = "STALL1", "STALL^READER", "OT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 4096, 4096, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = os.urandom(4096 * 4096 * 2)  # 32 MiB: more than the socket buffers hold
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    r = stow(srv, path.read_bytes())
    assert r.status_code == 200, r.text
    url = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    auth = srv.headers()["Authorization"]
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", int(srv.ports["http"])))
    try:
        s.sendall(
            f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n"
            'Accept: multipart/related; type="application/dicom"; transfer-syntax=*\r\n'
            "\r\n".encode()
        )
        time.sleep(HTTP_STALL_TIMEOUT * 3)  # read nothing
        s.settimeout(10)
        received = 0
        try:
            while chunk := s.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < len(ds.PixelData)  # cut off, not delivered whole
    finally:
        s.close()
    assert httpx.get(srv.base_url + "/health", timeout=10).status_code == 200
