"""QIDO-RS through a `solent serve` node with concurrent clients (`python -m bench query --http`).

The in-process figures leave out what a clinician's viewer pays on top: HTTP, authentication,
the access rule of a *user* (with break-glass grants), the audit record, DICOM JSON. Here the
same shapes go through one node on the benchmark's index, ``clients`` threads at once, each with
its own keep-alive connection, as user ``bench<n>`` of trust ZZA.
"""

from __future__ import annotations

import http.client
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

from bench.solent_server import SolentServer
from solent.index.bulk import SyntheticSummary

Keys = Callable[[int], dict[str, str]]


class _Node(SolentServer):
    """A node on an existing index: no trusts or DICOM nodes to add, a fresh user and token."""

    def _prepare(self) -> None:
        return None

    def _make_token(self) -> str:
        user = f"bench{uuid.uuid4().hex[:8]}"
        self.cli("user", "add", user, "--trust", "ZZA", "--role", "radiologist", "--no-password")
        out = self.cli("token", "create", "--user", user, "--api", "--label", "bench query")
        return out.stdout.strip().splitlines()[-1].strip()


def _p(samples: list[float], q: float) -> float:
    return samples[min(len(samples) - 1, round(q * (len(samples) - 1)))]


def _with_children(pid: int) -> list[int]:
    """A process and its children still running (the node's HTTP and DIMSE workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid, *(int(c) for c in f.read().split())]
    except OSError:
        return [pid]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children still running (the HTTP workers), from
    /proc: the node's own cost per request, which a shared machine's load does not inflate
    the way it inflates latency."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = _with_children(pid)
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _postgres_cpu_seconds() -> float:
    """User + system CPU of every PostgreSQL server process on this machine (its backends
    serve the node; other users of the server count too, so read it on a quiet machine)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, _, tail = f.read().rpartition(")")
        except OSError:
            continue
        if head.split("(", 1)[-1] == "postgres":
            fields = tail.split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _connection_split(pid: int, port: int) -> str:
    """How the clients' connections are shared among the node's HTTP processes ("7/3"): each
    keep-alive connection stays with the process that accepted it, and an uneven split
    queues one process's requests behind its GIL while another idles (docs/benchmarks.md)."""
    inodes: dict[str, set[str]] = {"01": set(), "0A": set()}  # established, listening
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] in inodes:
                        inodes[fields[3]].add(fields[9])
        except OSError:
            continue
    pids = _with_children(pid)
    counts = []
    for p in pids:
        try:
            links = [os.readlink(f"/proc/{p}/fd/{fd}") for fd in os.listdir(f"/proc/{p}/fd")]
        except OSError:
            continue
        held = {link[8:-1] for link in links if link.startswith("socket:[")}
        if held & inodes["0A"]:  # an HTTP process: it holds the listening socket
            counts.append(len(held & inodes["01"]))
    return "/".join(str(n) for n in counts)


def _shape(node: _Node, keys: Keys, limit: int | None, repeat: int, clients: int) -> str:
    local = threading.local()
    port = int(node.ports["http"])
    headers = {**node.headers(), "Accept": "application/dicom+json"}

    def one(i: int) -> float:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        params = {**keys(i), **({"limit": str(limit)} if limit else {})}
        started = time.perf_counter()
        conn.request("GET", "/dicomweb/studies?" + urlencode(params), headers=headers)
        resp = conn.getresponse()
        resp.read()
        took = (time.perf_counter() - started) * 1000
        if resp.status not in (200, 204):
            raise RuntimeError(f"QIDO answered HTTP {resp.status} for {params}")
        return took

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(clients)))  # warm: one connection and plan per client
        split = _connection_split(node.pid, port)
        cpu, pg, own = _cpu_seconds(node.pid), _postgres_cpu_seconds(), time.process_time()
        started = time.perf_counter()
        samples = sorted(pool.map(one, range(repeat * clients)))
        wall = time.perf_counter() - started
        cpu = _cpu_seconds(node.pid) - cpu
        pg = _postgres_cpu_seconds() - pg
        own = time.process_time() - own
    per = 1000 / len(samples)
    return (
        f"median {statistics.median(samples):7.2f} ms   p95 {_p(samples, 0.95):7.2f} ms   "
        f"{len(samples) / wall:6.1f} req/s   CPU ms/req: node {cpu * per:4.1f}  "
        f"PostgreSQL {pg * per:4.1f}  clients {own * per:4.1f}   connections {split}"
    )


def timed_http(
    database_url: str,
    audit_key: bytes,
    summary: SyntheticSummary,
    shapes: dict[str, Keys],
    repeat: int,
    clients: int,
    workers: int = 1,
) -> list[str]:
    """Start a node on ``database_url``, time every shape with ``clients`` at once, stop it.
    ``workers``: the node's HTTP processes (SOLENT_HTTP_WORKERS)."""
    url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    lines = []
    env = {"SOLENT_AUDIT_KEY": audit_key.decode(), "SOLENT_HTTP_WORKERS": str(workers)}
    node = _Node(trusts={}, database_url=url, extra_env=env)
    node.start()
    try:
        for label, keys in shapes.items():
            limit = None if label.startswith("PatientID") else 100
            figures = _shape(node, keys, limit, repeat, clients)
            tag = f"HTTP x{clients}" + (f" w{workers}" if workers > 1 else "")
            lines.append(f"  {label:<34} {tag:<8} {figures}")
            print(lines[-1], flush=True)
    finally:
        node.stop()
    return lines
