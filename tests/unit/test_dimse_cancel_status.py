"""C-CANCEL of C-FIND / C-MOVE / C-GET and the refusal statuses of C-MOVE / C-GET (PS3.4 C.4),
with pynetdicom as the SCU on loopback."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.presentation import build_role

from solent.protocols.dimse import find_scp
from solent.protocols.dimse.net import make_ae
from solent.protocols.dimse.ul.server import Association as FastAssociation
from tests.unit.test_dimse_scp import CT, PEER, Running, _start, free_port, send

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
PATIENT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
INSTANCES = 40


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Dataset]]:
    """One server holding a CT series of INSTANCES instances."""
    tmp = tmp_path_factory.mktemp("cancel")
    for run in _start(tmp):
        ds = pydicom.dcmread(CT)
        paths = []
        for i in range(INSTANCES):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = i + 1
            path = tmp / f"{i}.dcm"
            ds.save_as(path)
            paths.append(path)
        assert {r.status for r in send(run, *paths)} == {0}
        yield run, ds


def _associate(run: Running, *contexts: str, **kwargs: Any) -> Association:
    ae = make_ae(PEER)
    for uid in contexts:
        ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", run.port, ae_title="SOLENT", **kwargs)
    assert assoc.is_established
    return assoc


def _study(ds: Dataset, level: str = "STUDY") -> Dataset:
    ident = Dataset()
    ident.QueryRetrieveLevel = level
    ident.StudyInstanceUID = ds.StudyInstanceUID
    return ident


def _has_cancel(assoc: Any, msg_id: int) -> bool:
    if isinstance(assoc, FastAssociation):
        # The fast engine reads a C-MOVE's C-CANCEL between sub-operations: it has reached
        # the server once it waits, unread, on the requestor's association.
        return msg_id in assoc.cancelled or bool(select.select([assoc.sock], [], [], 0)[0])
    return msg_id in assoc.dimse.cancel_req


def _wait_for_cancel(run: Running, msg_id: int) -> None:
    """Until the server has a C-CANCEL for ``msg_id`` (at most 10 s)."""
    server = run.listener._servers[0]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        _has_cancel(a, msg_id) for a in server.active_associations
    ):
        time.sleep(0.01)


def test_c_find_cancelled_mid_stream_answers_fe00(
    series: tuple[Running, Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    run, ds = series
    ident = _study(ds, "IMAGE")
    ident.SeriesInstanceUID = ds.SeriesInstanceUID
    ident.SOPInstanceUID = ""
    assoc = _associate(run, STUDY_FIND)
    try:
        everything = [s.Status for s, _ in assoc.send_c_find(ident, STUDY_FIND, msg_id=7)]
        assert everything == [0xFF00] * INSTANCES + [0x0000]
        # On loopback the SCP could send all matches before the C-CANCEL lands; so the server
        # builds its second match only once the cancel has reached its association.
        build = find_scp.response_identifier
        built: list[int] = []

        def second_waits_for_the_cancel(*args: Any, **kwargs: Any) -> Dataset:
            built.append(1)
            if len(built) == 2:
                _wait_for_cancel(run, 8)
            return build(*args, **kwargs)

        monkeypatch.setattr(find_scp, "response_identifier", second_waits_for_the_cancel)
        statuses = []
        for status, _ in assoc.send_c_find(ident, STUDY_FIND, msg_id=8):
            statuses.append(status.Status)
            if len(statuses) == 1:
                assoc.send_c_cancel(8, query_model=STUDY_FIND)
        assert statuses == [0xFF00, 0xFF00, 0xFE00]
        # The association goes on.
        monkeypatch.undo()
        assert [s.Status for s, _ in assoc.send_c_find(_study(ds), STUDY_FIND)][-1] == 0x0000
    finally:
        assoc.release()


def test_c_get_cancelled_reports_sub_operation_counts(series: tuple[Running, Dataset]) -> None:
    run, ds = series
    received: list[str] = []
    holder: dict[str, Association] = {}

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) == 2:
            holder["assoc"].send_c_cancel(11, query_model=STUDY_GET)
        return 0x0000

    ae = make_ae(PEER)
    ae.add_requested_context(STUDY_GET)
    ae.add_requested_context(ds.SOPClassUID, [str(ds.file_meta.TransferSyntaxUID)])
    assoc = ae.associate(
        "127.0.0.1",
        run.port,
        ae_title="SOLENT",
        ext_neg=[build_role(ds.SOPClassUID, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    holder["assoc"] = assoc
    try:
        responses = list(assoc.send_c_get(_study(ds), STUDY_GET, msg_id=11))
    finally:
        assoc.release()
    final, _ = responses[-1]
    assert final.Status == 0xFE00
    # The cancel arrived before the second sub-operation's response: nothing after it.
    assert len(received) == 2
    assert final.NumberOfCompletedSuboperations == 2
    assert final.NumberOfFailedSuboperations == 0
    assert final.NumberOfRemainingSuboperations == INSTANCES - 2


def test_c_move_cancelled_reports_sub_operation_counts(series: tuple[Running, Dataset]) -> None:
    run, ds = series
    received: list[str] = []
    holder: dict[str, Association] = {}

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) == 1:
            holder["assoc"].send_c_cancel(21, query_model=STUDY_MOVE)
            # The cancel travels on the other association: answer this sub-operation only
            # once it has reached the SCP, so the SCP goes on knowing of it.
            _wait_for_cancel(run, 21)
        return 0x0000

    dest_port = free_port()
    dest = make_ae("CANCELDEST")
    dest.add_supported_context(ds.SOPClassUID, [str(ds.file_meta.TransferSyntaxUID)])
    server = dest.start_server(
        ("127.0.0.1", dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None
    try:
        run.archive.index.add_node("CANCELDEST", "127.0.0.1", dest_port, "ZZA", ["store"])
        assoc = _associate(run, STUDY_MOVE)
        holder["assoc"] = assoc
        try:
            responses = list(assoc.send_c_move(_study(ds), "CANCELDEST", STUDY_MOVE, msg_id=21))
        finally:
            assoc.release()
    finally:
        server.shutdown()
    final, _ = responses[-1]
    assert final.Status == 0xFE00
    assert final.NumberOfCompletedSuboperations == len(received) == 1
    assert final.NumberOfFailedSuboperations == 0
    assert final.NumberOfRemainingSuboperations == INSTANCES - 1


def test_c_move_refusals_answer_their_own_statuses(series: tuple[Running, Dataset]) -> None:
    run, ds = series
    assoc = _associate(run, STUDY_MOVE, PATIENT_MOVE)
    try:
        # Unknown move destination: A801, no sub-operation.
        [(final, _)] = list(assoc.send_c_move(_study(ds), "NOWHERE", STUDY_MOVE))
        assert final.Status == 0xA801
        # PATIENT level is not in the Study Root model: A900 with a comment.
        bad = Dataset()
        bad.QueryRetrieveLevel = "PATIENT"
        bad.PatientID = str(ds.PatientID)
        run.archive.index.add_node("NOWHERE2", "127.0.0.1", free_port(), "ZZA", ["store"])
        [(final, _)] = list(assoc.send_c_move(bad, "NOWHERE2", STUDY_MOVE))
        assert final.Status == 0xA900
        assert "Query/Retrieve Level" in final.ErrorComment
        # The unique key of the level is missing: A900 too (Patient Root, SERIES level).
        missing = Dataset()
        missing.QueryRetrieveLevel = "SERIES"
        missing.PatientID = str(ds.PatientID)
        missing.StudyInstanceUID = ds.StudyInstanceUID
        [(final, _)] = list(assoc.send_c_move(missing, "NOWHERE2", PATIENT_MOVE))
        assert final.Status == 0xA900
        assert "unique key" in final.ErrorComment
        # The association goes on: a valid move to an unknown node still answers.
        [(final, _)] = list(assoc.send_c_move(_study(ds), "NOWHERE", STUDY_MOVE))
        assert final.Status == 0xA801
    finally:
        assoc.release()


def test_c_get_refusal_answers_a900_without_sub_operations(
    series: tuple[Running, Dataset],
) -> None:
    run, ds = series
    assoc = _associate(run, STUDY_GET)
    try:
        bad = Dataset()
        bad.QueryRetrieveLevel = "SERIES"
        bad.StudyInstanceUID = ds.StudyInstanceUID
        [(final, _)] = list(assoc.send_c_get(bad, STUDY_GET))
        assert final.Status == 0xA900
        assert "unique key" in final.ErrorComment
        assert final.NumberOfFailedSuboperations == 0
        assert final.NumberOfCompletedSuboperations == 0
    finally:
        assoc.release()


def test_c_move_by_a_node_that_may_not_retrieve_is_refused(tmp_path: Path) -> None:
    """Such a node gets no retrieve context at all: the association offers nothing to move."""
    for run in _start(tmp_path):
        run.archive.index.add_node("QUERYONLY", "127.0.0.1", 104, "ZZA", ["query"])
        ae = make_ae("QUERYONLY")
        ae.add_requested_context(STUDY_MOVE)
        assoc = ae.associate("127.0.0.1", run.port, ae_title="SOLENT")
        try:
            assert not assoc.is_established or not assoc.accepted_contexts
        finally:
            if assoc.is_established:
                assoc.release()
