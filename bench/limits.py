"""Physical limits of this machine for the bytes a benchmark moves.

An archive cannot store faster than the disk takes fsynced bytes, nor serve faster than loopback
TCP carries them; measuring both on the same volume and in the same run lets every throughput
figure read as a fraction of what the machine allows.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path

CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    disk_sequential_mb_s: float  # one file, written in 1 MiB chunks, fsynced at the end
    disk_per_file_mb_s: float  # the same bytes as N files, each fsynced (how archives store)
    disk_per_file_files_s: float
    tcp_loopback_mb_s: float  # one connection, 1 MiB sends, receiver in another process

    def as_json(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in asdict(self).items()}


def disk_sequential(directory: Path, total: int) -> float:
    """MB/s for ``total`` bytes into one file with a final fsync."""
    block = os.urandom(CHUNK)
    with tempfile.NamedTemporaryFile(dir=directory, delete=True) as f:
        fd = f.fileno()
        started = time.perf_counter()
        written = 0
        while written < total:
            written += os.write(fd, block[: min(CHUNK, total - written)])
        os.fsync(fd)
        elapsed = time.perf_counter() - started
    return total / elapsed / 1e6


def disk_per_file(directory: Path, files: int, size: int) -> tuple[float, float]:
    """(MB/s, files/s) writing ``files`` files of ``size`` bytes, fsyncing each one."""
    payload = os.urandom(size)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        started = time.perf_counter()
        for i in range(files):
            fd = os.open(os.path.join(tmp, f"{i}.bin"), os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
        dfd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        elapsed = time.perf_counter() - started
    return files * size / elapsed / 1e6, files / elapsed


def _receiver(port_pipe: Connection, total: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port_pipe.send(srv.getsockname()[1])
        conn, _ = srv.accept()
        with conn:
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            got = 0
            while got < total:
                n = conn.recv_into(view)
                if not n:
                    break
                got += n
            conn.sendall(b"k")


def tcp_loopback(total: int) -> float:
    """MB/s of one loopback TCP connection carrying ``total`` bytes to another process."""
    parent, child = mp.Pipe()
    proc = mp.get_context("fork").Process(target=_receiver, args=(child, total), daemon=True)
    proc.start()
    port = parent.recv()
    block = os.urandom(CHUNK)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        sent = 0
        while sent < total:
            n = min(CHUNK, total - sent)
            s.sendall(block[:n])
            sent += n
        s.recv(1)
        elapsed = time.perf_counter() - started
    proc.join(timeout=10)
    return total / elapsed / 1e6


def measure(directory: Path, total: int, file_size: int, repeats: int = 3) -> Limits:
    """Medians over ``repeats`` of each limit for ``total`` bytes (files of ``file_size``)."""
    files = max(1, total // file_size)
    seq = [disk_sequential(directory, total) for _ in range(repeats)]
    per = [disk_per_file(directory, files, file_size) for _ in range(repeats)]
    tcp = [tcp_loopback(total) for _ in range(repeats)]
    return Limits(
        statistics.median(seq),
        statistics.median(p[0] for p in per),
        statistics.median(p[1] for p in per),
        statistics.median(tcp),
    )


if __name__ == "__main__":
    print(measure(Path(tempfile.gettempdir()), 300 * 525_000, 525_000).as_json())
