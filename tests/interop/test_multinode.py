"""N nodes, one service (issue 16): three `solent serve` nodes behind HAProxy, sharing one
PostgreSQL database and one S3 bucket (a moto server over real HTTP).

What a regional service must show: a study stored through one node (C-STORE through the
balancer, STOW-RS) is at once queryable and retrievable through the others (QIDO, WADO-RS,
C-MOVE from any node to a registered DCMTK storescp); HL7 over MLLP goes through the balancer
too. A node SIGKILLed during a four-association C-STORE ingest, another during a QIDO load: every
instance that was acknowledged is queryable afterwards, and clients finish by retrying through
the balancer. A killed node restarts and rejoins; a node stopped with SIGTERM drains (readiness
fails first) so the clients of the balancer see no error at all.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from hl7.client import MLLPClient
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from solent.app import build_archive
from solent.index.hl7_senders import add_sender
from solent.settings import load_settings
from tests.conftest import (
    RunningServer,
    S3Server,
    _bearer_for_test_user,
    require_tool,
    start_server,
)
from tests.contract.synthetic import new_uid, write_instance
from tests.interop.haproxy_support import Backend, Balancer, free_port, start_haproxy

MODALITY = "MODALITY"  # the registered DICOM client that stores and queries
DEST = "DEST"  # the registered C-MOVE destination (DCMTK storescp)
DEADLINE = 45.0  # each load phase stops by itself after this long, finished or not


@dataclass
class Cluster:
    tmp: Path
    shared: dict[str, str]
    nodes: dict[str, RunningServer]
    balancer: Balancer
    headers: dict[str, str]
    storescp_dir: Path
    logs: dict[str, Path] = field(default_factory=dict)

    def start_node(self, name: str, ports: dict[str, int] | None = None) -> RunningServer:
        extra = dict(self.shared)
        if ports:
            extra.update(
                SOLENT_HTTP_PORT=str(ports["http"]),
                SOLENT_DICOM_PORT=str(ports["dicom"]),
                SOLENT_HL7_PORT=str(ports["hl7"]),
            )
        node = start_server(self.tmp / name, extra_env=extra)
        self.nodes[name] = node
        return node

    def kill(self, name: str) -> None:
        proc = self.nodes[name].proc
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def backend(name: str, node: RunningServer) -> Backend:
    return Backend(name, node.ports["http"], node.ports["dicom"], node.ports["hl7"])


@pytest.fixture
def cluster(
    tmp_path: Path, fresh_postgres_url: str, s3_env: dict[str, str], s3_server: S3Server
) -> Iterator[Cluster]:
    haproxy = require_tool("haproxy")
    require_tool("storescp")
    require_tool("movescu")
    shared = {
        "SOLENT_DATABASE_URL": fresh_postgres_url,
        **s3_env,
        # Nodes share the token key (a key file in one node's data dir is not seen by others).
        "SOLENT_TOKEN_SECRET": "multinode-test-secret-0123456789abcdef",
        "SOLENT_AUDIT_KEY": "multinode-test audit key shared by the nodes",
        "SOLENT_DICOM_WORKERS": "1",  # 2 cores shared by 3 nodes: one receiving process each
        "SOLENT_SHUTDOWN_DRAIN_SECONDS": "2",  # > HAProxy's inter 300 ms x fall 2
    }
    storescp_dir = tmp_path / "storescp"
    storescp_dir.mkdir()
    storescp_port = free_port()
    storescp = subprocess.Popen(
        ["storescp", "-aet", DEST, "+B", "-od", str(storescp_dir), str(storescp_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    settings = load_settings(environ=shared, data_dir=tmp_path / "admin")
    admin = build_archive(settings)  # migrates the database, creates the bucket
    admin.index.add_trust("ZZA", "Trust A")
    admin.index.add_node(MODALITY, "127.0.0.1", 104, "ZZA", ["store", "query", "retrieve"])
    admin.index.add_node(DEST, "127.0.0.1", storescp_port, "ZZA", ["store"])
    add_sender(admin.index, "*", "ZZA", ("127.0.0.1",), None)
    headers = _bearer_for_test_user(admin.index, settings)
    admin.close()

    nodes: dict[str, RunningServer] = {}
    balancer: Balancer | None = None
    try:
        # Start the three nodes at once (each migrates under the advisory lock: a no-op here).
        started: dict[str, RunningServer] = {}

        def start(name: str) -> None:
            started[name] = start_server(tmp_path / name, extra_env=shared)

        threads = [threading.Thread(target=start, args=(f"n{i}",)) for i in (1, 2, 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        nodes.update(started)
        assert len(nodes) == 3, "a node did not start"
        balancer = start_haproxy(haproxy, tmp_path, [backend(n, nodes[n]) for n in sorted(nodes)])
        yield Cluster(tmp_path, shared, nodes, balancer, headers, storescp_dir)
    finally:
        if balancer is not None:
            balancer.stop()
        for node in nodes.values():
            node.stop()
        storescp.terminate()
        storescp.wait(timeout=10)


# --- clients ----------------------------------------------------------------------------------


def store_assoc(port: int) -> Any:
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    return ae.associate("127.0.0.1", port, ae_title="SOLENT")


def acknowledged(status: Dataset | None) -> bool:
    """Success or a warning (e.g. already stored with identical content): the archive has it."""
    code = getattr(status, "Status", None)
    return code is not None and (code == 0 or 0xB000 <= code <= 0xBFFF)


def make_study(directory: Path, patient: str, count: int, seed: int) -> tuple[str, list[Path]]:
    study, series = new_uid(), new_uid()
    paths = []
    for i in range(count):
        w = write_instance(
            directory / f"{patient}-{i}.dcm",
            patient_id=patient,
            study_uid=study,
            series_uid=series,
            seed=seed + i,
        )
        paths.append(w.path)
    return study, paths


def qido(client: httpx.Client, url: str, params: dict[str, str] | None = None) -> list[Any]:
    r = client.get(url, params=params, headers={"Accept": "application/dicom+json"})
    assert r.status_code in (200, 204), (url, r.status_code, r.text[:300])
    return r.json() if r.status_code == 200 else []


def with_retries(fn: Callable[[], Any], retries: list[int], deadline: float) -> Any:
    """A client that retries through the balancer on a transport error or a 5xx, with backoff."""
    delay = 0.1
    while True:
        try:
            return fn()
        except (httpx.TransportError, AssertionError):
            if time.monotonic() > deadline:
                raise
            retries.append(1)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def uid_of(item: dict[str, Any], tag: str) -> str:
    value: str = item[tag]["Value"][0]
    return value


# --- the scenario -----------------------------------------------------------------------------


def test_three_nodes_behind_haproxy_share_one_archive_and_survive_a_killed_node(
    cluster: Cluster,
) -> None:
    lb = cluster.balancer
    n1, n2, n3 = (cluster.nodes[n] for n in ("n1", "n2", "n3"))
    node_client = {
        name: httpx.Client(base_url=node.base_url, headers=cluster.headers, timeout=30)
        for name, node in cluster.nodes.items()
    }
    via_lb = httpx.Client(base_url=lb.base_url, headers=cluster.headers, timeout=30)

    # 1. Store through one node, read through the others at once.
    # C-STORE through the balancer.
    study_c, files_c = make_study(cluster.tmp / "in", "MN-C", 3, seed=1)
    assoc = store_assoc(lb.dicom)
    assert assoc.is_established
    try:
        for path in files_c:
            assert acknowledged(assoc.send_c_store(pydicom.dcmread(path)))
    finally:
        assoc.release()
    # STOW-RS through node 1.
    study_s, files_s = make_study(cluster.tmp / "in", "MN-S", 2, seed=50)
    boundary = "multinode-boundary"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + p.read_bytes()
            + b"\r\n"
            for p in files_s
        )
        + f"--{boundary}--\r\n".encode()
    )
    stow = node_client["n1"].post(
        "/dicomweb/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    assert stow.status_code == 200, stow.text
    # QIDO through node 2 and node 3, straight after.
    for name in ("n2", "n3"):
        found = qido(node_client[name], "/dicomweb/studies", {"PatientID": "MN-*"})
        assert {uid_of(s, "0020000D") for s in found} == {study_c, study_s}, name
    # WADO-RS through node 3: the bytes STOW sent to node 1.
    sent = pydicom.dcmread(files_s[0])
    wado = node_client["n3"].get(
        f"/dicomweb/studies/{study_s}/series/{sent.SeriesInstanceUID}"
        f"/instances/{sent.SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )
    assert wado.status_code == 200, wado.text[:300]
    assert files_s[0].read_bytes() in wado.content  # stored as sent, served by another node
    # C-MOVE from node 2 (the study stored through the balancer) and from node 3 (the STOW one).
    for node, study in ((n2, study_c), (n3, study_s)):
        moved = subprocess.run(
            ["movescu", "-S", "-aet", MODALITY, "-aec", "SOLENT", "-aem", DEST,
             "127.0.0.1", str(node.ports["dicom"]),
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert moved.returncode == 0, moved.stdout + moved.stderr
    received = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
        for p in cluster.storescp_dir.iterdir()
    }
    expected = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files_c}
    assert received == expected | {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files_s
    }
    # HL7 over MLLP through the balancer: an ADT registers the patient, AA comes back.
    adt = (
        "MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250101090000||ADT^A04^ADT_A01|MN0001|P|2.4\r"
        "EVN|A04|20250101090000\r"
        "PID|1||MN-H^^^ZZA^MR||MULTI^NODE||19700101|O\r"
    )
    with MLLPClient("127.0.0.1", lb.hl7) as mllp:
        ack = mllp.send_message(adt).decode()
    assert "MSA|AA|MN0001" in ack, ack

    # 2. Kill node 1 during a four-association C-STORE ingest through the balancer.
    per_client = 30
    batches = [
        make_study(cluster.tmp / "ingest", f"MN-I{c}", per_client, seed=1000 * (c + 1))
        for c in range(4)
    ]
    acked: set[str] = set()
    lock = threading.Lock()
    failures: list[str] = []
    reconnects: list[int] = []
    deadline = time.monotonic() + DEADLINE

    def ingest(paths: list[Path]) -> None:
        pending = [pydicom.dcmread(p) for p in paths]
        while pending and time.monotonic() < deadline:
            assoc = store_assoc(lb.dicom)
            if not assoc.is_established:
                reconnects.append(1)
                time.sleep(0.2)
                continue
            try:
                sent = 0
                while pending and sent < 10:  # a new association every 10 instances
                    status = assoc.send_c_store(pending[0])
                    if not acknowledged(status):
                        reconnects.append(1)
                        break  # the node died mid-association: resend on a new one
                    with lock:
                        acked.add(pending.pop(0).SOPInstanceUID)
                    sent += 1
            finally:
                with contextlib.suppress(Exception):
                    assoc.release() if assoc.is_established else assoc.abort()
        if pending:
            failures.append(f"{len(pending)} instances not acknowledged by the deadline")

    threads = [threading.Thread(target=ingest, args=(paths,)) for _, paths in batches]
    for t in threads:
        t.start()
    while len(acked) < per_client and time.monotonic() < deadline:
        time.sleep(0.02)
    cluster.kill("n1")  # SIGKILL mid-ingest: associations on it die without a response
    for t in threads:
        t.join()
    assert not failures, failures
    assert len(acked) == 4 * per_client
    print(f"ingest: {len(acked)} acknowledged, {len(reconnects)} associations retried")
    # Every acknowledged instance is there, through the balancer (the survivors answer).
    for study, paths in batches:
        items = qido(via_lb, f"/dicomweb/studies/{study}/instances", {"limit": "1000"})
        stored = {uid_of(i, "00080018") for i in items}
        sent_uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}
        assert sent_uids & acked <= stored
        assert stored == sent_uids  # and nothing else, nothing twice
    lb.wait_status("n1", "DOWN")

    # 3. Kill node 2 during a QIDO load through the balancer.
    ingest_studies = {study for study, _ in batches}
    answered: list[int] = []
    retries: list[int] = []
    wrong: list[str] = []
    deadline = time.monotonic() + DEADLINE

    def query_load(count: int) -> None:
        for _ in range(count):
            if time.monotonic() > deadline:
                wrong.append("deadline passed")
                return
            found = with_retries(
                lambda: qido(via_lb, "/dicomweb/studies", {"PatientID": "MN-I*"}),
                retries,
                deadline,
            )
            if {uid_of(s, "0020000D") for s in found} != ingest_studies:
                wrong.append(f"{len(found)} studies")
            answered.append(1)

    threads = [threading.Thread(target=query_load, args=(30,)) for _ in range(4)]
    for t in threads:
        t.start()
    while len(answered) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    cluster.kill("n2")
    for t in threads:
        t.join()
    assert not wrong, wrong[:5]
    assert len(answered) == 120
    print(f"QIDO load: {len(answered)} answered, {len(retries)} requests retried")
    lb.wait_status("n2", "DOWN")

    # 4. A killed node restarts on its ports and rejoins; a node stopped with SIGTERM drains
    # first (readiness fails, the balancer takes it out), so clients see no error at all.
    cluster.start_node("n1", {k: n1.ports[k] for k in ("http", "dicom", "hl7")})
    lb.wait_status("n1", "UP")
    retries_before = len(retries)
    answered.clear()
    deadline = time.monotonic() + DEADLINE
    threads = [threading.Thread(target=query_load, args=(30,)) for _ in range(4)]
    for t in threads:
        t.start()
    while len(answered) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    n3.proc.send_signal(signal.SIGTERM)
    assert n3.proc.wait(timeout=30) == 0
    for t in threads:
        t.join()
    assert not wrong, wrong[:5]
    assert len(answered) == 120
    assert len(retries) == retries_before, "a graceful stop must not fail any client request"
    # The restarted node serves what the others stored.
    assert len(qido(node_client["n1"], "/dicomweb/studies", {"PatientID": "MN-*"})) == 6
    for c in (*node_client.values(), via_lb):
        c.close()
