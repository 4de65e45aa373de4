"""R57 over the wire: a study edit made through the JSON API is told to the RIS of each trust
concerned as an HL7 v2.5 OMI^O23 over MLLP. The RIS here is a real MLLP listener on loopback
that keeps every frame and answers as scripted: an AE first makes the job retry with the jobs'
backoff and the same message control ID, an AA ends it. Each notification sent is audited. A
trust with no RIS registered is sent nothing, and that is no error. Over TLS the archive checks
the RIS certificate against the registered CA and shows its own to a RIS that asks."""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import hl7
import pytest
from fastapi.testclient import TestClient

from solent.app import Archive, build_archive
from solent.domain.principal import SYSTEM
from solent.domain.records import DestinationRow
from solent.jobs.queue import InProcessQueue
from solent.jobs.tasks import consumers_named
from solent.protocols.hl7.mllp import Deframer, frame
from solent.protocols.hl7.ris import RisSender
from solent.protocols.http import create_app
from solent.settings import load_settings
from tests.interop.test_dimse_tls_dcmtk import Authority
from tests.unit.security_fixtures import add_user, cli_env, demo_template, study_of
from tests.unit.test_hl7_ris_messages import MOVED

__all__ = ["demo_template"]
pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


class Ris:
    """An MLLP listener that records each message and answers with the next scripted MSA-1,
    or hangs up without an answer ("hang up"); AA once the script is used up."""

    def __init__(
        self, port: int, answers: list[str] | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        self.frames: list[str] = []
        self.tls = tls
        self.answers = list(answers or [])
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(4)
        self.port = port
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    conn.close()
                    continue
            with conn:
                conn.settimeout(5)
                deframer = Deframer()
                while data := _recv(conn):
                    for message in deframer.feed(data):
                        answer = self._answer(message.decode("utf-8"))
                        if answer is None:
                            break  # hang up without an answer
                        conn.sendall(frame(answer))
                    else:
                        continue
                    break

    def _answer(self, text: str) -> bytes | None:
        self.frames.append(text)
        code = self.answers.pop(0) if self.answers else "AA"
        if code == "hang up":
            return None
        control_id = hl7.parse(text)["MSH.F10"]
        return (
            "MSH|^~\\&|CRIS|ZZB|SOLENT|PACS|20261206093000||ACK^O23^ACK|A1|P|2.5\r"
            f"MSA|{code}|{control_id}|{'busy' if code != 'AA' else ''}\r"
        ).encode()

    def close(self) -> None:
        self.sock.close()


def _recv(conn: socket.socket) -> bytes:
    try:
        return conn.recv(65536)
    except (ssl.SSLError, OSError):  # a TLS peer refused after the handshake (no certificate)
        return b""


@pytest.fixture
def archive(demo_template: Path, tmp_path: Path) -> Iterator[Archive]:
    data = tmp_path / "demo-var"
    shutil.copytree(demo_template, data)
    archive = build_archive(load_settings(environ={}, data_dir=data))
    yield archive
    archive.close()


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive), raise_server_exceptions=False) as c:
        yield c


def _queue(archive: Archive) -> InProcessQueue:
    """The `ris` consumer as `solent serve` runs it, with a short backoff; one pass now puts
    its cursor at the feed's head (as a serving node does when it starts)."""
    queue = InProcessQueue(
        archive.index,
        archive.store,
        consumers=consumers_named("ris"),
        backoff_seconds=0.05,
        max_attempts=3,
        tell_ris=RisSender(timeout=3),
    )
    assert queue.dispatch() == 0
    return queue


def _register(monkeypatch: pytest.MonkeyPatch, data: Path, trust: str, port: int) -> None:
    from solent.cli import main

    cli_env(monkeypatch, data)
    add = ["hl7", "ris", "add", trust, "--host", "127.0.0.1", "--port", str(port)]
    assert main([*add, "--application", f"RIS_{trust}"]) == 0


def _audits(archive: Archive) -> list[dict[str, Any]]:
    return [a for a in archive.audit.search(actor_name="ris-notify", limit=50)]


def test_a_move_is_told_to_the_ris_and_retried_with_the_same_control_id_until_aa(
    archive: Archive,
    client: TestClient,
    tmp_path: Path,
    reserved_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ris = Ris(reserved_port, answers=["AE", "hang up"])
    try:
        _register(monkeypatch, tmp_path / "demo-var", "ZZB", ris.port)
        queue = _queue(archive)
        bob_study = study_of(archive, "ZZB", "B7730444")
        admin = add_user(archive, "adminzb", "ZZB", "pacs_admin")
        body = {"to": {"issuer": "ZZB", "patient_id": "B7730021"}, "reason": "wrong patient"}
        moved = client.post(f"/api/identity/studies/{bob_study}/move", json=body, headers=admin)
        assert moved.status_code == 200, moved.text

        assert queue.dispatch() == 1
        assert queue.failed == 0
    finally:
        ris.close()

    first, second, third = ris.frames  # AE, no answer, then AA
    # The same message each time, MSH-10 included: the RIS can de-duplicate.
    assert first == second == third
    msg = hl7.parse(third)
    assert str(msg.segment("MSH")[9]) == "OMI^O23^OMI_O23" and str(msg["MSH.F5"]) == "RIS_ZZB"
    ids = {(str(r[3]), str(r[4])): str(r[0]) for r in msg.segment("PID")[3]}
    assert ids[("ZZB", "MR")] == "B7730021"  # the record the study belongs to now
    assert str(msg["ORC.F1"]) == "XO" and str(msg["IPC.F3"]) == bob_study
    accession = str(msg["OBR.F18"])
    assert accession and str(msg["ORC.F3.R1.C1"]) == accession
    assert "B7730444" in str(msg["NTE.F3"])  # the record it was filed under before

    audits = _audits(archive)  # one per message sent, answered or not
    assert sorted(a["outcome"] for a in audits) == ["failure", "failure", "success"]
    for a in audits:
        assert a["patient_id"] == "B7730021" and a["study_uid"] == bob_study
        assert str(msg["MSH.F10"]) in a["detail"] and "RIS_ZZB" in a["detail"]


def test_a_ris_that_refuses_every_attempt_leaves_a_failed_job_an_operator_retries(
    archive: Archive,
    client: TestClient,
    tmp_path: Path,
    reserved_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the embedded default too, a notification the RIS did not take after all attempts is
    not lost: it is kept as a failed job, and `jobs retry` sends the same message again."""
    ris = Ris(reserved_port, answers=["AE", "AE", "AE"])  # as many as the attempts
    try:
        _register(monkeypatch, tmp_path / "demo-var", "ZZB", ris.port)
        queue = _queue(archive)
        bob_study = study_of(archive, "ZZB", "B7730444")
        admin = add_user(archive, "adminzb", "ZZB", "pacs_admin")
        body = {"to": {"issuer": "ZZB", "patient_id": "B7730021"}, "reason": "wrong patient"}
        moved = client.post(f"/api/identity/studies/{bob_study}/move", json=body, headers=admin)
        assert moved.status_code == 200, moved.text
        assert queue.dispatch() == 1
        (failed,) = archive.services.jobs.list(SYSTEM, "failed")
        assert failed.task == "notify_ris" and failed.attempts == 3
        assert queue.stats()["feed"]["ris"]["backlog"] == 0
        assert len(ris.frames) == 3

        archive.services.jobs.retry(SYSTEM, failed.id)  # the RIS answers AA now
        assert queue.dispatch() == 1
    finally:
        ris.close()
    assert [j.status for j in archive.services.jobs.list(SYSTEM)] == ["succeeded"]
    assert len(ris.frames) == 4 and len(set(ris.frames)) == 1  # the same message, MSH-10 too
    audits = _audits(archive)
    assert sorted(a["outcome"] for a in audits) == ["failure"] * 3 + ["success"]


def test_a_move_between_trusts_is_told_to_both_ris_and_a_correction_names_both_accessions(
    archive: Archive,
    client: TestClient,
    tmp_path: Path,
    reserved_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ris = Ris(reserved_port)
    try:
        for trust in ("ZZB", "ZZC"):
            _register(monkeypatch, tmp_path / "demo-var", trust, ris.port)
        queue = _queue(archive)
        bob_study = study_of(archive, "ZZB", "B7730444")
        asker = add_user(archive, "adminzb", "ZZB", "pacs_admin")
        approver = add_user(archive, "adminzc", "ZZC", "pacs_admin")
        body = {"to": {"issuer": "ZZC", "patient_id": "C-55501"}, "reason": "wrong trust"}
        asked = client.post(f"/api/identity/studies/{bob_study}/move", json=body, headers=asker)
        assert asked.status_code == 200, asked.text
        assert queue.dispatch() == 0  # a request moves nothing: nothing to tell yet
        edit = asked.json()["id"]
        done = client.post(f"/api/identity/study-edits/{edit}/approve", headers=approver)
        assert done.status_code == 200, done.text
        assert queue.dispatch() == 1
        assert len(ris.frames) == 2
        fix = {"accession_number": "ZZC|77", "reason": "booked under another order"}
        r = client.post(f"/api/identity/studies/{bob_study}/accession", json=fix, headers=approver)
        assert r.status_code == 200, r.text
        assert queue.dispatch() == 1
    finally:
        ris.close()

    moves = [hl7.parse(f) for f in ris.frames[:2]]
    assert sorted(str(m["MSH.F5"]) for m in moves) == ["RIS_ZZB", "RIS_ZZC"]
    assert len({str(m["MSH.F10"]) for m in moves}) == 2  # one control ID per RIS
    for m in moves:
        assert str(m["PID.F3.R1.C1"]) == "C-55501" and str(m["PID.F3.R1.C4"]) == "ZZC"
    corrections = [hl7.parse(f) for f in ris.frames[2:]]
    assert sorted(str(m["MSH.F5"]) for m in corrections) == ["RIS_ZZB", "RIS_ZZC"]
    for m in corrections:
        orders = [(str(o[1]), m.unescape(str(o[3][0][0]))) for o in m.segments("ORC")]
        assert orders[0][0] == "RU" and orders[1] == ("RO", "ZZC|77")  # sent escaped
        assert orders[0][1] == str(moves[0]["OBR.F18"])  # the accession before


def test_a_merge_is_told_as_a_change_of_the_study_merged_into(
    archive: Archive,
    client: TestClient,
    tmp_path: Path,
    reserved_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Alice's chest X-ray merged into her CT at ZZA: ZZA's RIS hears an XO of the CT (the study
    that holds the X-ray's series now) under her record, the note naming the X-ray's study."""
    ris = Ris(reserved_port)
    try:
        _register(monkeypatch, tmp_path / "demo-var", "ZZA", ris.port)
        queue = _queue(archive)
        rows = archive.query.list_studies(SYSTEM, issuer="ZZA", local_id="A100001")
        ct = next(r["study_uid"] for r in rows if r["modalities"] == "CT")
        xr = next(r["study_uid"] for r in rows if r["study_uid"] != ct)
        admin = add_user(archive, "adminza", "ZZA", "pacs_admin")
        body = {"into_study_uid": ct, "reason": "one examination booked twice"}
        merged = client.post(f"/api/identity/studies/{xr}/merge", json=body, headers=admin)
        assert merged.status_code == 200, merged.text
        assert queue.dispatch() == 1
        assert queue.failed == 0
    finally:
        ris.close()
    (frame_,) = ris.frames
    msg = hl7.parse(frame_)
    assert str(msg["MSH.F5"]) == "RIS_ZZA" and str(msg["ORC.F1"]) == "XO"
    assert str(msg["IPC.F3"]) == ct and str(msg["PID.F3.R1.C1"]) == "A100001"
    note = msg.unescape(str(msg["NTE.F3"]))
    assert note.startswith("study.merged:") and f"series of study {xr} moved into it" in note


def test_no_ris_registered_sends_nothing_and_is_no_error(
    archive: Archive, client: TestClient, reserved_port: int
) -> None:
    ris = Ris(reserved_port)
    try:
        queue = _queue(archive)
        bob_study = study_of(archive, "ZZB", "B7730444")
        admin = add_user(archive, "adminzb", "ZZB", "pacs_admin")
        body = {"to": {"issuer": "ZZB", "patient_id": "B7730021"}, "reason": "wrong patient"}
        moved = client.post(f"/api/identity/studies/{bob_study}/move", json=body, headers=admin)
        assert moved.status_code == 200, moved.text
        assert queue.dispatch() == 1
        assert queue.failed == 0
    finally:
        ris.close()
    assert ris.frames == []
    assert _audits(archive) == []


def test_a_ris_over_tls_is_checked_and_is_shown_the_archive_certificate(
    tmp_path: Path, reserved_port: int
) -> None:
    ca, other = Authority(tmp_path, "ris"), Authority(tmp_path, "other")
    server, client = ca.issue("ris.zzb", server=True), ca.issue("solent", server=False)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(server.cert), str(server.key))
    context.load_verify_locations(cafile=str(ca.pem))
    context.verify_mode = ssl.CERT_REQUIRED  # the RIS asks for the archive's certificate
    ris = Ris(reserved_port, tls=context)
    dest = DestinationRow("ZZB", "127.0.0.1", ris.port, "CRIS", "ZZB", True, str(ca.pem))
    notice = replace(MOVED, destination=dest)
    try:
        sender = RisSender(timeout=3, client_cert=client.cert, client_key=client.key)
        assert sender(notice) == ("AA", "")
        with pytest.raises(OSError):  # no certificate to show: the RIS hangs up, no ACK
            RisSender(timeout=3)(notice)
        wrong_ca = replace(notice, destination=replace(dest, tls_ca=str(other.pem)))
        with pytest.raises(ssl.SSLCertVerificationError):  # not the RIS we registered
            sender(wrong_ca)
    finally:
        ris.close()
    assert len(ris.frames) == 1 and "SOLENT17.ZZB" in ris.frames[0]
