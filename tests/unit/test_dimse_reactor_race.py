"""A response is never lost to pynetdicom's reactor thread of an association Solent requested.

A C-MOVE's sub-operation pauses the sub-association's reactor, sends its C-STORE-RQ and takes
the C-STORE-RSP from the DIMSE queue. pynetdicom's pause is racy: a reactor thread descheduled
just after passing its checkpoint still reads as paused, and when it runs again it takes the
response and drops it; the C-MOVE then stood still for the whole DIMSE timeout. With DCMTK
`movescu --port` moving a study to itself this hung about once in 25 moves on a loaded host.
Here that interleaving is forced (PreemptedReactor) instead of waited for.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import evt

from solent.protocols.dimse.net import SolentAE, make_ae
from tests.conftest import require_corpus
from tests.unit.test_dimse_scp import CT, PEER, Running, _start, free_port, send

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
DIMSE_TIMEOUT = 5  # what a lost response costs here (the archive's is 120 s)


class PreemptedReactor(threading.Event):
    """An association's reactor checkpoint with the scheduling of the hang, once: the reactor
    thread passes the checkpoint (so ``_is_paused`` still reads True), is not run again until
    the response is queued, and then runs before the sender that waits for it.

    The sender's pause (``clear``) comes while the reactor is past the checkpoint; the
    reactor's next ``wait`` (after its one look at the DIMSE queue) lets the sender take from
    the queue (ReactorFirstQueue)."""

    def __init__(self) -> None:
        super().__init__()
        self.set()
        self.passed = threading.Event()  # the reactor is past the checkpoint, not running
        self.queued = threading.Event()  # a DIMSE message (the response) was queued
        self.looked = threading.Event()  # the reactor has had its look at the queue
        self.state = "armed"

    def wait(self, timeout: float | None = None) -> bool:
        if self.state == "resumed":
            self.state = "done"
            self.looked.set()
        flag = super().wait(timeout)
        if flag and self.state == "armed":
            self.state = "stalled"
            self.passed.set()
            self.queued.wait(10)
            self.state = "resumed"
        return flag

    def clear(self) -> None:
        self.passed.wait(10)
        super().clear()


class ReactorFirstQueue(queue.Queue[Any]):
    """The association's DIMSE queue, where the sender's blocking take waits for the
    preempted reactor's look."""

    def __init__(self, race: PreemptedReactor) -> None:
        super().__init__()
        self.race = race

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self.race.queued.set()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block and self.race.passed.is_set():
            self.race.looked.wait(10)
        return super().get(block, timeout)


def _preempt_reactor(assoc: Any) -> Any:
    race = PreemptedReactor()
    assoc.dimse.msg_queue = ReactorFirstQueue(race)
    assoc._reactor_checkpoint = race
    return assoc


@pytest.fixture
def destination() -> Iterator[tuple[int, list[str]]]:
    """A storage SCP (pynetdicom) on loopback; the SOP Instance UIDs it received."""
    require_corpus()
    ct = pydicom.dcmread(CT, stop_before_pixels=True)
    received: list[str] = []
    ae = make_ae("DEST")
    ae.add_supported_context(ct.SOPClassUID, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])

    def store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, store)]
    )
    yield port, received
    server.shutdown()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    yield from _start(tmp_path)


def test_c_store_response_reaches_the_sender_when_the_reactor_was_preempted(
    destination: tuple[int, list[str]],
) -> None:
    port, received = destination
    ct = pydicom.dcmread(CT)
    ae = make_ae("SOLENT")
    ae.dimse_timeout = DIMSE_TIMEOUT
    ae.add_requested_context(ct.SOPClassUID, ["1.2.840.10008.1.2.1"])
    assoc = _preempt_reactor(ae.associate("127.0.0.1", port, ae_title="DEST"))
    assert assoc.is_established
    try:
        started = time.monotonic()
        status = assoc.send_c_store(ct)
        elapsed = time.monotonic() - started
    finally:
        if assoc.is_established:
            assoc.release()
    assert received == [ct.SOPInstanceUID]
    assert status.get("Status") == 0x0000, "the C-STORE-RSP was lost to the reactor"
    assert elapsed < DIMSE_TIMEOUT


def test_c_move_to_a_workstation_completes_when_the_reactor_was_preempted(
    running: Running, destination: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As movescu asks: Study Root FIND and MOVE proposed on one association (so pynetdicom's
    Move SCP serves it), the images to a registered workstation; the archive's sub-association
    has its reactor preempted at its first C-STORE sub-operation."""
    port, received = destination
    assert send(running, CT)[0].status == 0
    ct = pydicom.dcmread(CT, stop_before_pixels=True)
    running.archive.index.add_node("DEST", "127.0.0.1", port, "ZZA", ["store"])
    archive_ae = running.listener.ae
    archive_ae.dimse_timeout = DIMSE_TIMEOUT
    monkeypatch.setattr(
        archive_ae,
        "associate",
        lambda *a, **kw: _preempt_reactor(SolentAE.associate(archive_ae, *a, **kw)),
    )

    ae = make_ae(PEER)
    ae.add_requested_context(STUDY_FIND)
    ae.add_requested_context(STUDY_MOVE)
    assoc = ae.associate("127.0.0.1", running.port, ae_title="SOLENT")
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ct.StudyInstanceUID
    started = time.monotonic()
    try:
        responses = [status for status, _ in assoc.send_c_move(ident, "DEST", STUDY_MOVE)]
    finally:
        if assoc.is_established:
            assoc.release()
    elapsed = time.monotonic() - started
    final = responses[-1]
    assert received == [ct.SOPInstanceUID]
    assert (final.Status, final.NumberOfCompletedSuboperations) == (0x0000, 1), final
    assert final.get("NumberOfFailedSuboperations", 0) == 0
    assert elapsed < DIMSE_TIMEOUT
