"""The DIMSE listener in process, with pynetdicom as the peer on loopback."""

from __future__ import annotations

import io
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.presentation import build_role

from solent.app import Archive, build_archive
from solent.domain.records import NodeRow
from solent.protocols.dimse import scu
from solent.protocols.dimse.commitment import STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
from solent.protocols.dimse.listener import DimseListener
from solent.protocols.dimse.net import make_ae
from solent.services.retrieve import split_part10
from solent.settings import load_settings
from tests.conftest import require_corpus, shared_dir

CORPUS = shared_dir() / "dicom-corpus"
MR_J2K = CORPUS / "ts_j2k_lossless_mr_small.dcm"
MR_RLE = CORPUS / "ts_rle_mr_small.dcm"
CT = CORPUS / "mod_ct_small.dcm"
PEER = "PEER"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    def __init__(self, archive: Archive, listener: DimseListener, port: int) -> None:
        self.archive = archive
        self.listener = listener
        self.port = port

    def node(self, ae_title: str = "SOLENT") -> NodeRow:
        return NodeRow(ae_title, "127.0.0.1", self.port, "ZZA", True, True, True)


def _start(tmp_path: Path, **overrides: Any) -> Iterator[Running]:
    require_corpus()
    settings = load_settings(environ={}, data_dir=tmp_path / "var", dicom_port=0, **overrides)
    archive = build_archive(settings)
    archive.index.add_trust("ZZA", "Trust A")
    archive.index.add_trust("ZZB", "Trust B")
    archive.index.add_node(PEER, "127.0.0.1", 104, "ZZA", ["store", "query", "retrieve"])
    listener = DimseListener(archive.services)
    port = listener.start()
    yield Running(archive, listener, port)
    listener.stop()
    archive.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    yield from _start(tmp_path)


def dataset_bytes(data: bytes) -> bytes:
    _, offset = split_part10(data)
    return data[offset:]


def send(running: Running, *paths: Path) -> list[scu.SentFile]:
    return scu.send_files(PEER, running.node(), list(paths))


def _nodelay_of_connections(port: int) -> tuple[list[int], list[int]]:
    """TCP_NODELAY of this process's TCP sockets connected to ``port`` (initiated) and of
    those accepted on it, found through /proc/self/fd: no library's internals."""
    initiated: list[int] = []
    accepted: list[int] = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        with sock:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if sock.type != socket.SOCK_STREAM:
                continue
            try:
                local, peer = sock.getsockname(), sock.getpeername()
            except OSError:
                continue  # a listening socket
            nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            if peer[1] == port:
                initiated.append(nodelay)
            elif local[1] == port:
                accepted.append(nodelay)
    return initiated, accepted


def test_tcp_nodelay_on_accepted_and_initiated_sockets(running: Running) -> None:
    ae = make_ae(PEER)  # Solent's own SCU (C-MOVE sub-associations, forwarding)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", running.port, ae_title="SOLENT")
    assert assoc.is_established
    try:
        initiated, accepted = _nodelay_of_connections(running.port)
        assert initiated and accepted
        assert all(initiated) and all(accepted)
    finally:
        assoc.release()


def test_c_store_keeps_the_received_bytes_and_the_sending_nodes_trust(running: Running) -> None:
    [result] = send(running, MR_J2K)
    assert result.status == 0x0000
    original = pydicom.dcmread(MR_J2K, stop_before_pixels=True)
    [ref] = _locate(running, original)
    stored = running.archive.store.open(ref.blob_key).read()
    assert dataset_bytes(stored) == dataset_bytes(MR_J2K.read_bytes())
    assert ref.transfer_syntax_uid == "1.2.840.10008.1.2.4.90"
    studies = running.archive.query.list_studies(_system(), local_id=str(original.PatientID))
    assert [s["trust_code"] for s in studies] == ["ZZA"]
    # The same bytes again: success (duplicate), nothing new stored.
    assert send(running, MR_J2K)[0].status == 0x0000
    assert running.archive.index.stats()["instances"] == 1


def _system() -> Any:
    from solent.domain.principal import SYSTEM

    return SYSTEM


def _image_keys(ds: Dataset) -> Any:
    from solent.services.retrieve import RetrieveKeys

    return RetrieveKeys("IMAGE", sop_instance_uids=(str(ds.SOPInstanceUID),))


def _locate(running: Running, ds: Dataset) -> Any:
    return running.listener.retrieve.locate(
        _system(), _image_keys(ds), channel="test", destination="T"
    )


def test_c_store_of_a_dataset_not_matching_its_request_is_refused(
    running: Running, tmp_path: Path
) -> None:
    ds = pydicom.dcmread(CT)
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR, dataset says CT
    bad = tmp_path / "mismatch.dcm"
    ds.save_as(bad)
    [result] = send(running, bad)
    assert result.status == 0xA900
    assert "SOP Class UID" in result.comment
    assert running.archive.index.stats()["instances"] == 0
    assert send(running, CT)[0].status == 0x0000  # the association and server go on


def test_unregistered_caller_is_rejected_and_dev_switch_opens_it(tmp_path: Path) -> None:
    for opened in _start(tmp_path, dicom_allow_unknown=True, dicom_unknown_trust="ZZB"):
        node = opened.node()
        [result] = scu.send_files("STRANGER", node, [CT])
        assert result.status == 0x0000
        studies = opened.archive.query.list_studies(_system())
        assert [s["trust_code"] for s in studies] == ["ZZB"]


def test_unknown_caller_rejected_with_reason(running: Running) -> None:
    ae = make_ae("STRANGER")
    ae.add_requested_context("1.2.840.10008.1.1")
    deadline = time.monotonic() + 60
    while True:
        assoc = ae.associate("127.0.0.1", running.port, ae_title="SOLENT")
        # Under full-suite load pynetdicom's requestor once saw neither answer though the
        # server logged its A-ASSOCIATE-RJ: ask again then; an acceptance fails at once.
        if assoc.is_established or assoc.is_rejected or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not assoc.is_established
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)


def test_storage_commitment_reports_committed_and_missing(running: Running) -> None:
    assert send(running, CT)[0].status == 0
    ct = pydicom.dcmread(CT, stop_before_pixels=True)
    reports: list[tuple[int, Dataset]] = []
    got = threading.Event()

    def on_report(event: Any) -> tuple[int, None]:
        reports.append((event.event_type, event.event_information))
        got.set()
        return 0x0000, None

    ae = make_ae(PEER)
    ae.add_requested_context(STORAGE_COMMITMENT)
    assoc = ae.associate(
        "127.0.0.1",
        running.port,
        ae_title="SOLENT",
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
    )
    assert assoc.is_established
    request = Dataset()
    request.TransactionUID = generate_uid()
    items = []
    for cls, uid in ((ct.SOPClassUID, ct.SOPInstanceUID), (ct.SOPClassUID, "1.2.3.4.5.6")):
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = uid
        items.append(item)
    request.ReferencedSOPSequence = Sequence(items)
    status, _ = assoc.send_n_action(request, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
    assert status.Status == 0x0000
    assert got.wait(10), "no N-EVENT-REPORT"
    assoc.release()
    event_type, info = reports[0]
    assert event_type == 2  # some failed
    assert info.TransactionUID == request.TransactionUID
    assert [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == [ct.SOPInstanceUID]
    [failed] = info.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == "1.2.3.4.5.6"
    assert failed.FailureReason == 0x0112


def _get(running: Running, ds: Dataset, syntaxes: list[str]) -> tuple[Any, list[bytes]]:
    received: list[bytes] = []

    def on_store(event: Any) -> int:
        received.append(Path(event.dataset_path).read_bytes())
        return 0

    ae = make_ae(PEER)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.2.3")
    ae.add_requested_context(ds.SOPClassUID, syntaxes)
    assoc = ae.associate(
        "127.0.0.1",
        running.port,
        ae_title="SOLENT",
        ext_neg=[build_role(ds.SOPClassUID, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ds.StudyInstanceUID
    final = None
    for status, _ in assoc.send_c_get(ident, "1.2.840.10008.5.1.4.1.2.2.3"):
        final = status
    assoc.release()
    return final, received


def test_c_get_sends_stored_bytes_when_the_syntax_is_accepted_else_decoded(
    running: Running,
) -> None:
    from solent.protocols.dimse.net import configure_pynetdicom

    configure_pynetdicom(running.archive.settings.tmp_dir / "dimse")
    assert send(running, MR_RLE)[0].status == 0
    ds = pydicom.dcmread(MR_RLE)
    final, received = _get(running, ds, ["1.2.840.10008.1.2.5"])
    assert final is not None and final.Status == 0
    assert [dataset_bytes(r) for r in received] == [dataset_bytes(MR_RLE.read_bytes())]
    final, received = _get(running, ds, ["1.2.840.10008.1.2"])
    assert final.Status == 0 and len(received) == 1
    got = pydicom.dcmread(io.BytesIO(received[0]))
    assert got.SOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(got.pixel_array, ds.pixel_array)


def test_c_move_reports_partial_failure_honestly(running: Running) -> None:
    """The destination refuses one of two instances: final Warning B000, 1 failed, its UID."""
    assert send(running, CT)[0].status == 0
    ct = pydicom.dcmread(CT, stop_before_pixels=True)
    second = pydicom.dcmread(CT)
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = running.archive.settings.data_dir / "second.dcm"
    second.save_as(path)
    assert send(running, path)[0].status == 0
    dest_port = free_port()
    dest = make_ae("DEST")
    dest.add_supported_context(ct.SOPClassUID, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])

    def refuse_second(event: Any) -> int:
        return 0xA700 if event.request.AffectedSOPInstanceUID == second.SOPInstanceUID else 0

    server = dest.start_server(
        ("127.0.0.1", dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, refuse_second)]
    )
    try:
        running.archive.index.add_node("DEST", "127.0.0.1", dest_port, "ZZA", ["store"])
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = ct.StudyInstanceUID
        out = scu.move(PEER, running.node(), ident, "DEST")
        assert (out.status, out.completed, out.failed) == (0xB000, 1, 1)
    finally:
        server.shutdown()
    # The sub-operation that failed is in the audit trail, by its instance UID.
    failures = [
        r for r in running.archive.audit.search(action="retrieve") if r["outcome"] == "failure"
    ]
    assert len(failures) == 1, failures
    detail = failures[0]["detail"]
    detail = json.loads(detail) if isinstance(detail, str) else detail
    assert detail["failed"] == 1 and detail["completed"] == 1
    assert detail["failed_sop_instance_uids"] == [second.SOPInstanceUID]


def test_c_find_cap_gives_a_clear_failure(tmp_path: Path) -> None:
    for run in _start(tmp_path, dicom_max_find_results=1):
        assert send(run, CT)[0].status == 0
        assert send(run, MR_RLE)[0].status == 0
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = ""
        ae = make_ae(PEER)
        ae.add_requested_context("1.2.840.10008.5.1.4.1.2.2.1")
        assoc = ae.associate("127.0.0.1", run.port, ae_title="SOLENT")
        statuses = [s for s, _ in assoc.send_c_find(ident, "1.2.840.10008.5.1.4.1.2.2.1")]
        assoc.release()
        assert statuses[-1].Status == 0xA700
        assert "more than 1 matches" in statuses[-1].ErrorComment


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_port_serves_dimse_over_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    tls_port = free_port()
    for run in _start(tmp_path, dicom_tls_port=tls_port, dicom_tls_cert=cert, dicom_tls_key=key):
        assert run.listener.tls_port == tls_port
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ae = make_ae(PEER)
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate(
            "127.0.0.1", tls_port, ae_title="SOLENT", tls_args=(context, "127.0.0.1")
        )
        assert assoc.is_established
        assert isinstance(assoc.dul.socket.socket, ssl.SSLSocket)
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        # Plain DIMSE on the TLS port does not get an association.
        plain = make_ae(PEER)
        plain.add_requested_context("1.2.840.10008.1.1")
        plain.acse_timeout = 3
        assert not plain.associate("127.0.0.1", tls_port, ae_title="SOLENT").is_established


def _private_class_copy(tmp: Path) -> Path:
    ds = pydicom.dcmread(CT)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.3.46.670589.11.0.0.12.1"
    path = tmp / "private.dcm"
    ds.save_as(path)
    return path


def test_private_sop_classes_only_by_policy(tmp_path: Path) -> None:
    require_corpus()
    private = _private_class_copy(tmp_path)
    for closed in _start(tmp_path / "closed"):
        with pytest.raises(scu.AssociationFailed):  # no acceptable presentation context
            send(closed, private)
    for opened in _start(tmp_path / "open", dicom_accept_unknown_sop_classes=True):
        [result] = send(opened, private)
        assert result.status == 0x0000
        assert opened.archive.index.stats()["instances"] == 1


def _find(run: Running, ident: Dataset, model: str) -> list[tuple[Any, Any]]:
    ae = make_ae(PEER)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", run.port, ae_title="SOLENT")
    answers = list(assoc.send_c_find(ident, model))
    assoc.release()
    return answers


def test_c_find_patient_root_and_a_bad_value_gets_a900(running: Running) -> None:
    assert send(running, CT)[0].status == 0
    ct = pydicom.dcmread(CT, stop_before_pixels=True)
    ident = Dataset()
    ident.QueryRetrieveLevel = "PATIENT"
    ident.PatientID = ct.PatientID
    ident.PatientName = ""
    ident.IssuerOfPatientID = ""
    answers = _find(running, ident, "1.2.840.10008.5.1.4.1.2.1.1")
    matches = [ds for s, ds in answers if s.Status == 0xFF00]
    assert [(m.PatientID, m.IssuerOfPatientID) for m in matches] == [(ct.PatientID, "ZZA")]
    assert answers[-1][0].Status == 0x0000
    bad = Dataset()
    bad.QueryRetrieveLevel = "STUDY"
    bad.StudyDate = "20241301"
    bad.StudyInstanceUID = ""
    [(final, _)] = _find(running, bad, "1.2.840.10008.5.1.4.1.2.2.1")
    assert final.Status == 0xA900 and "StudyDate" in final.ErrorComment


def test_c_store_in_another_vr_encoding_than_its_context_is_refused(running: Running) -> None:
    """Explicit VR bytes on an Implicit VR Little Endian context (found probing with a hostile
    peer): pydicom reads them anyway, but the file would be stored declaring implicit VR and
    misread by every other reader. Refused, nothing stored; the association goes on."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pynetdicom.dimse_primitives import C_STORE

    ds = pydicom.dcmread(CT)
    ae = make_ae(PEER)
    implicit = "1.2.840.10008.1.2"
    ae.add_requested_context(ds.SOPClassUID, [implicit])
    assoc = ae.associate("127.0.0.1", running.port, ae_title="SOLENT")
    assert assoc.is_established
    try:
        [context] = assoc.accepted_contexts
        assert context.transfer_syntax == [implicit]
        statuses = []
        for implicit_vr in (False, True):  # the wrong encoding, then the right one
            fp = DicomBytesIO()
            fp.is_little_endian, fp.is_implicit_VR = True, implicit_vr
            write_dataset(fp, ds)
            req = C_STORE()
            req.MessageID = len(statuses) + 1
            req.AffectedSOPClassUID = ds.SOPClassUID
            req.AffectedSOPInstanceUID = ds.SOPInstanceUID
            req.Priority = 2
            req.DataSet = io.BytesIO(fp.getvalue())
            # Paused reactor, as pynetdicom's own send_c_echo: else it may take the response.
            assoc._reactor_checkpoint.clear()
            while not assoc._is_paused:
                time.sleep(0.001)
            try:
                assoc.dimse.send_msg(req, context.context_id)
                _, rsp = assoc.dimse.get_msg(block=True)
            finally:
                assoc._reactor_checkpoint.set()
            assert rsp is not None
            statuses.append((rsp.Status, str(getattr(rsp, "ErrorComment", "") or "")))
            if not implicit_vr:
                assert running.archive.index.stats()["instances"] == 0
    finally:
        assoc.release()
    (wrong, why), (right, _) = statuses
    assert wrong & 0xF000 in (0xA000, 0xC000) and "explicit VR" in why, statuses
    assert right == 0x0000, statuses
    [ref] = _locate(running, ds)
    stored = pydicom.dcmread(io.BytesIO(running.archive.store.open(ref.blob_key).read()))
    assert stored.file_meta.TransferSyntaxUID == implicit and stored.PatientID == ds.PatientID
