"""One measurement of one phase against one archive (Solent or Orthanc), through real clients.

DIMSE goes through DCMTK (`storescu`, `findscu`, `getscu`, env ``TCP_NODELAY=1``); DICOMweb
through plain HTTP/1.1 on loopback with keep-alive (bulk retrieval reads a raw socket so the
client is not what limits MB/s). Each function raises `Unavailable` when the archive does not
offer the endpoint yet (404/405 on the route, no DICOM port), and `Failed` when it answers
wrongly, so the runner can print "n/a (not implemented: ...)" instead of a number.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
JSON_ACCEPT = "application/dicom+json"
CLIENT_AET = "BENCH"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


class Unavailable(Exception):
    """The archive does not offer this yet (route 404/405, no DICOM listener)."""


class Failed(Exception):
    """The archive answered, but wrongly (error status, missing instances)."""


class TimedOut(Failed):
    """No answer within the phase's time budget (the server may still be working on it)."""


@dataclass
class Target:
    """How to reach one archive."""

    name: str
    dicomweb: str  # base URL of the DICOMweb root, no trailing slash
    aet: str
    dicom_port: int | None
    pids: set[int]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.dicomweb)
        return parts.hostname or "127.0.0.1", parts.port or 80

    @property
    def prefix(self) -> str:
        return urlsplit(self.dicomweb).path.rstrip("/")

    def dicom(self) -> tuple[str, int]:
        if not self.dicom_port:
            raise Unavailable("not implemented: DICOM listener")
        return "127.0.0.1", self.dicom_port


def _route_missing(status: int, body: bytes) -> bool:
    """A framework 404 for an unknown route (not 'this study does not exist')."""
    if status == 404 and b'"Unknown resource"' in body:  # Orthanc: no such route
        return True
    return status == 405 or (status == 404 and body.strip() in (b'{"detail":"Not Found"}', b""))


def check_http(status: int, body: bytes, what: str, ok: tuple[int, ...] = (200,)) -> None:
    if status in ok:
        return
    if _route_missing(status, body):
        raise Unavailable(f"not implemented: {what}")
    raise Failed(f"{what}: HTTP {status} {body[:160]!r}")


class Http:
    """One keep-alive HTTP/1.1 connection to a target (not thread-safe: one per thread)."""

    def __init__(self, target: Target, timeout: float = 300) -> None:
        host, port = target.host_port
        self.target = target
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[int, bytes]:
        """One request; a keep-alive connection the server closed meanwhile is reopened once."""
        all_headers = {**self.target.headers, **headers}
        for attempt in (1, 2):
            try:
                self.conn.request(method, self.target.prefix + path, body=body, headers=all_headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except TimeoutError as exc:
                self.conn.close()
                raise TimedOut(f"no answer within {self.conn.timeout:.0f} s") from exc
            except (ConnectionError, http.client.RemoteDisconnected) as exc:
                self.conn.close()
                if attempt == 2:
                    raise Unavailable(f"connection refused/closed: {exc}") from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


# -- DIMSE through DCMTK ----------------------------------------------------------------------


def cstore(target: Target, files: list[Path], associations: int) -> float:
    """Seconds to C-STORE ``files`` with ``associations`` storescu processes in parallel."""
    host, port = target.dicom()
    groups = [files[i::associations] for i in range(associations)]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-v", "-aet", CLIENT_AET, "-aec", target.aet, host, str(port)]
            + [str(f) for f in group],
            env=DCMTK_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for group in groups
        if group
    ]
    outputs = [p.communicate()[0] for p in procs]
    elapsed = time.perf_counter() - started
    ok = sum(o.count("Received Store Response (Success") for o in outputs)
    ok += sum(o.count("Received Store Response (Warning") for o in outputs)
    if ok < len(files):
        tail = outputs[0][-400:]
        if "Association Rejected" in tail or "Association Request Failed" in tail:
            raise Failed(f"C-STORE association rejected: {tail.strip()[-200:]}")
        raise Failed(f"C-STORE: {ok}/{len(files)} stored; storescu said: {tail.strip()[-200:]}")
    return elapsed


def _findscu(
    target: Target, keys: dict[str, str], repeat: int, timeout: float
) -> tuple[float, int]:
    host, port = target.dicom()
    args = ["findscu", "-v", "-S", "--repeat", str(repeat), "-aet", CLIENT_AET]
    args += ["-aec", target.aet, host, str(port), "-k", "QueryRetrieveLevel=STUDY"]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}" if v else k]
    started = time.perf_counter()
    try:
        out = subprocess.run(args, env=DCMTK_ENV, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise TimedOut(f"no C-FIND answer within {timeout:.0f} s") from exc
    elapsed = time.perf_counter() - started
    text = out.stdout + out.stderr
    if "Association Rejected" in text or out.returncode != 0:
        raise Failed(f"C-FIND: findscu exit {out.returncode}: {text.strip()[-200:]}")
    finals = text.count("Received Final Find Response")
    if finals < repeat:
        raise Failed(f"C-FIND: {finals}/{repeat} queries completed: {text.strip()[-200:]}")
    return elapsed, text.count("Find Response: ") // repeat


def echo_seconds(target: Target) -> float:
    """Wall time of `echoscu`: DCMTK start-up plus association, the floor under one findscu."""
    host, port = target.dicom()
    args = ["echoscu", "-aet", CLIENT_AET, "-aec", target.aet, host, str(port)]
    started = time.perf_counter()
    out = subprocess.run(args, env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise Failed(f"C-ECHO failed: {(out.stdout + out.stderr).strip()[-200:]}")
    return time.perf_counter() - started


def cfind(
    target: Target, keys: dict[str, str], floor: float, budget: float = 0.4, timeout: float = 30
) -> tuple[float, int]:
    """(seconds per query on an open association, matches).

    findscu --repeat N+1 minus --repeat 1, so process start and association set-up (~50 ms of
    DCMTK start-up here) do not hide the query. N is chosen so the repeats take ~``budget``
    seconds: many for fast queries (start-up jitter averages out), few for slow ones.
    """
    one, matches = _findscu(target, keys, 1, timeout)
    estimate = max(one - floor, 0.001)
    repeat = max(3, min(20, round(budget / estimate)))
    many, _ = _findscu(target, keys, repeat + 1, timeout * (repeat + 1))
    return max(0.0, (many - one) / repeat), matches


def cget(target: Target, study: str, series: str, workdir: Path) -> tuple[float, int, int]:
    """(seconds, files, bytes) for getscu to retrieve one series into a RAM-backed folder."""
    host, port = target.dicom()
    out_dir = workdir / f"cget-{uuid.uuid4().hex[:8]}"
    out_dir.mkdir(parents=True)
    try:
        args = ["getscu", "-S", "-aet", CLIENT_AET, "-aec", target.aet, "-od", str(out_dir)]
        args += [host, str(port), "-k", "QueryRetrieveLevel=SERIES"]
        args += ["-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={series}"]
        started = time.perf_counter()
        out = subprocess.run(args, env=DCMTK_ENV, capture_output=True, text=True, timeout=600)
        elapsed = time.perf_counter() - started
        files = list(out_dir.iterdir())
        size = sum(f.stat().st_size for f in files)
        if out.returncode != 0 or not files:
            text = (out.stdout + out.stderr).strip()[-200:]
            if "Association Rejected" in text or "No Acceptable Presentation" in text:
                raise Unavailable(f"not implemented: C-GET ({text[-120:]})")
            raise Failed(f"C-GET: {len(files)} files, getscu exit {out.returncode}: {text}")
        return elapsed, len(files), size
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


# -- DICOMweb --------------------------------------------------------------------------------


def _multipart(parts: list[bytes], boundary: str) -> bytes:
    b = boundary.encode()
    chunks = []
    for p in parts:
        chunks += [b"--", b, b"\r\nContent-Type: application/dicom\r\n\r\n", p, b"\r\n"]
    chunks += [b"--", b, b"--\r\n"]
    return b"".join(chunks)


def stow(target: Target, files: list[Path], batch: int = 50) -> float:
    """Seconds to STOW-RS ``files`` in requests of ``batch`` instances, one client."""
    boundary = "bench-" + uuid.uuid4().hex
    bodies = [
        _multipart([f.read_bytes() for f in files[i : i + batch]], boundary)
        for i in range(0, len(files), batch)
    ]
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": JSON_ACCEPT,
    }
    http = Http(target)
    stored = 0
    try:
        started = time.perf_counter()
        for body in bodies:
            status, data = http.request("POST", "/studies", headers, body)
            check_http(status, data, "STOW-RS POST /studies")
            answer = json.loads(data) if data else {}
            if answer.get("00081198", {}).get("Value"):
                raise Failed(f"STOW-RS failed instances: {str(answer['00081198'])[:200]}")
            stored += len(answer.get("00081199", {}).get("Value", []))
        elapsed = time.perf_counter() - started
    finally:
        http.close()
    if stored < len(files):
        raise Failed(f"STOW-RS: {stored}/{len(files)} instances referenced in the answers")
    return elapsed


def qido(http: Http, params: dict[str, str]) -> tuple[float, int]:
    """(seconds, matches) of one QIDO-RS /studies request on an open connection."""
    path = "/studies?" + urlencode(params)
    started = time.perf_counter()
    status, data = http.request("GET", path, {"Accept": JSON_ACCEPT, "Accept-Encoding": "gzip"})
    elapsed = time.perf_counter() - started
    check_http(status, data, "QIDO-RS /studies", ok=(200, 204))
    if status == 204 or not data:
        return elapsed, 0
    import gzip

    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return elapsed, len(json.loads(data))


def series_metadata(http: Http, study: str, series: str) -> tuple[float, int]:
    """(seconds, instances) for GET .../series/{uid}/metadata on an open connection."""
    path = f"/studies/{study}/series/{series}/metadata"
    started = time.perf_counter()
    status, data = http.request("GET", path, {"Accept": JSON_ACCEPT, "Accept-Encoding": "gzip"})
    elapsed = time.perf_counter() - started
    check_http(status, data, "WADO-RS series /metadata")
    if data[:2] == b"\x1f\x8b":
        import gzip

        data = gzip.decompress(data)
    return elapsed, len(json.loads(data))


@dataclass(frozen=True)
class Retrieval:
    seconds: float
    ttfb: float
    body_bytes: int


def wado_series(target: Target, study: str, series: str, expect_bytes: int) -> Retrieval:
    """Retrieve a series as multipart/related DICOM over a raw socket (Connection: close)."""
    host, port = target.host_port
    path = f"{target.prefix}/studies/{study}/series/{series}"
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Accept: {DICOM_ACCEPT}",
        "Accept-Encoding: identity",
        "Connection: close",
        *(f"{k}: {v}" for k, v in target.headers.items()),
    ]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    head = b""
    total = 0
    with socket.create_connection((host, port), timeout=300) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        s.sendall(request)
        n = s.recv_into(view)
        ttfb = time.perf_counter() - started
        while n:
            if len(head) < 65536 and b"\r\n\r\n" not in head:
                head += bytes(view[:n])
            total += n
            n = s.recv_into(view)
        elapsed = time.perf_counter() - started
    status_line, _, _ = head.partition(b"\r\n")
    status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
    header_len = head.find(b"\r\n\r\n") + 4
    body_start = head[header_len : header_len + 200]
    if status != 200:
        check_http(status, body_start, "WADO-RS series retrieval")
    body = total - header_len
    if body < expect_bytes:
        raise Failed(f"WADO-RS: {body} bytes, expected at least {expect_bytes}")
    return Retrieval(elapsed, ttfb, body)


def frames_throughput(
    target: Target,
    study: str,
    series: str,
    sops: list[str],
    *,
    clients: int = 8,
    duration: float = 3.0,
    min_bytes: int = 512 * 512 * 2,
) -> tuple[float, float]:
    """(requests/s, median latency s): ``clients`` threads ask single frames for ``duration``."""
    stop_at = time.perf_counter() + duration
    counts = [0] * clients
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def client(k: int) -> None:
        rng = random.Random(k)
        http = Http(target)
        try:
            while time.perf_counter() < stop_at:
                sop = rng.choice(sops)
                path = f"/studies/{study}/series/{series}/instances/{sop}/frames/1"
                t0 = time.perf_counter()
                status, data = http.request("GET", path, {"Accept": FRAME_ACCEPT})
                latencies[k].append(time.perf_counter() - t0)
                check_http(status, data, "WADO-RS /frames")
                if len(data) < min_bytes:
                    raise Failed(f"/frames: {len(data)} bytes, a frame is {min_bytes}")
                counts[k] += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            http.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    every = sorted(x for lat in latencies for x in lat)
    return sum(counts) / elapsed, every[len(every) // 2] if every else 0.0


def image_latency(
    target: Target, study: str, series: str, sop: str, kind: str, reps: int
) -> tuple[float, list[float]]:
    """(first request's seconds, later requests' seconds) of one instance's ``kind``
    ("rendered" or "thumbnail") as JPEG on one connection: first view, then repeat views."""
    http = Http(target)
    path = f"/studies/{study}/series/{series}/instances/{sop}/{kind}"
    try:
        times = []
        for _ in range(1 + max(1, reps)):
            started = time.perf_counter()
            status, data = http.request("GET", path, {"Accept": "image/jpeg"})
            times.append(time.perf_counter() - started)
            check_http(status, data, f"WADO-RS /{kind}")
            if data[:2] != b"\xff\xd8":
                raise Failed(f"/{kind}: not a JPEG ({data[:20]!r})")
        return times[0], times[1:]
    finally:
        http.close()


def warm(target: Target, study: str, series: str) -> dict[str, Any]:
    """One untimed metadata request so both archives start retrieval phases warm."""
    http = Http(target)
    try:
        _, n = series_metadata(http, study, series)
        return {"instances": n}
    finally:
        http.close()
