"""HAProxy in front of several `solent serve` nodes, for the multi-node tests and benchmarks.

HTTP is balanced at layer 7 with health checks on each node's /health/ready; the DICOM and MLLP
listeners are balanced at layer 4 (TCP) and track the same node's HTTP check, so a draining or
broken node gets no new association or MLLP connection either.
The configuration is the one docs/operations.md shows, with loopback addresses.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Backend:
    name: str
    http: int
    dicom: int
    hl7: int


@dataclass
class Balancer:
    proc: subprocess.Popen[str]
    http: int
    dicom: int
    hl7: int
    config: Path
    socket_path: Path

    def states(self) -> dict[tuple[str, str], str]:
        """(backend, server) -> status (UP, DOWN, ...) from HAProxy's stats socket."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket_path))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        rows = [line.split(",") for line in data.decode().splitlines() if line and line[0] != "#"]
        return {(r[0], r[1]): r[17] for r in rows if r[1] not in ("FRONTEND", "BACKEND")}

    def wait_status(self, server: str, status: str, timeout: float = 30) -> None:
        """Until the server has ``status`` (e.g. UP) in every backend."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                found = [v for (_, name), v in self.states().items() if name == server]
                if found and all(v.startswith(status) for v in found):
                    return
            time.sleep(0.1)
        raise AssertionError(f"HAProxy: {server} did not become {status}: {self.states()}")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def haproxy_config(
    backends: list[Backend], http: int, dicom: int, hl7: int, socket_path: Path
) -> str:
    """One frontend per protocol on loopback; checks every 300 ms, out after 2 failures."""
    check = (
        "  option httpchk GET /health/ready\n"
        "  http-check expect status 200\n"
        "  default-server inter 300ms fall 2 rise 2\n"
    )
    http_servers = "".join(f"  server {b.name} 127.0.0.1:{b.http} check\n" for b in backends)
    # The TCP backends follow the HTTP backend's checks of the same node (one readiness
    # probe per node, not three).
    dicom_servers = "".join(
        f"  server {b.name} 127.0.0.1:{b.dicom} track solent_http/{b.name}\n" for b in backends
    )
    hl7_servers = "".join(
        f"  server {b.name} 127.0.0.1:{b.hl7} track solent_http/{b.name}\n" for b in backends
    )
    return (
        "global\n"
        "  maxconn 1024\n"
        f"  stats socket {socket_path} mode 600 level admin\n"
        "defaults\n"
        "  timeout connect 2s\n"
        "  timeout check 2s\n"  # a node slow to answer under load is not a dead node
        "  timeout client 120s\n"
        "  timeout server 120s\n"
        "  retries 3\n"
        "  option redispatch\n"
        "frontend http\n"
        "  mode http\n"
        f"  bind 127.0.0.1:{http}\n"
        "  default_backend solent_http\n"
        "backend solent_http\n"
        "  mode http\n"
        "  balance roundrobin\n"
        "  retry-on conn-failure empty-response response-timeout\n"
        f"{check}{http_servers}"
        "frontend dicom\n"
        "  mode tcp\n"
        f"  bind 127.0.0.1:{dicom}\n"
        "  default_backend solent_dicom\n"
        "backend solent_dicom\n"
        "  mode tcp\n"
        "  balance leastconn\n"
        f"{dicom_servers}"
        "frontend mllp\n"
        "  mode tcp\n"
        f"  bind 127.0.0.1:{hl7}\n"
        "  default_backend solent_mllp\n"
        "backend solent_mllp\n"
        "  mode tcp\n"
        "  balance leastconn\n"
        f"{hl7_servers}"
    )


def start_haproxy(
    program: str, directory: Path, backends: list[Backend], timeout: float = 30
) -> Balancer:
    """Start HAProxy in the foreground and wait until every backend passes its checks."""
    http, dicom, hl7 = free_port(), free_port(), free_port()
    config = directory / "haproxy.cfg"
    socket_path = directory / "haproxy.sock"
    config.write_text(haproxy_config(backends, http, dicom, hl7, socket_path))
    check = subprocess.run([program, "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen(
        [program, "-db", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    balancer = Balancer(proc, http, dicom, hl7, config, socket_path)
    try:
        for b in backends:
            balancer.wait_status(b.name, "UP", timeout)
    except BaseException:
        balancer.stop()
        raise
    return balancer
