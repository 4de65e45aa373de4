"""QIDO-RS through a `solent serve` node with concurrent clients (`python -m bench query --http`).

The in-process figures leave out what a clinician's viewer pays on top: HTTP, authentication,
the access rule of a *user* (with break-glass grants), the audit record, DICOM JSON. Here the
same shapes go through one node on the benchmark's index, ``clients`` threads at once, each with
its own keep-alive connection, as user ``bench<n>`` of trust ZZA.
"""

from __future__ import annotations

import http.client
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
        started = time.perf_counter()
        samples = sorted(pool.map(one, range(repeat * clients)))
        wall = time.perf_counter() - started
    return (
        f"median {statistics.median(samples):7.2f} ms   p95 {_p(samples, 0.95):7.2f} ms   "
        f"{len(samples) / wall:6.1f} req/s"
    )


def timed_http(
    database_url: str,
    audit_key: bytes,
    summary: SyntheticSummary,
    shapes: dict[str, Keys],
    repeat: int,
    clients: int,
) -> list[str]:
    """Start a node on ``database_url``, time every shape with ``clients`` at once, stop it."""
    url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    lines = []
    node = _Node(trusts={}, database_url=url, extra_env={"SOLENT_AUDIT_KEY": audit_key.decode()})
    node.start()
    try:
        for label, keys in shapes.items():
            limit = None if label.startswith("PatientID") else 100
            figures = _shape(node, keys, limit, repeat, clients)
            lines.append(f"  {label:<34} {'HTTP x' + str(clients):<8} {figures}")
            print(lines[-1], flush=True)
    finally:
        node.stop()
    return lines
