"""The HL7 inbox: journalled before applied, applied exactly once, refused changes roll back."""

from __future__ import annotations

import dataclasses
import socket

from solent.app import Archive
from solent.index.hl7_senders import add_sender
from solent.protocols.hl7.handler import Hl7Handler
from solent.protocols.hl7.listener import Hl7Listener
from solent.protocols.hl7.mllp import MAX_MESSAGE_BYTES, Deframer, frame
from solent.services.identity import IdentityService
from solent.services.inbox import Envelope, InboxReads

A28 = (
    "MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250101||ADT^A28^ADT_A05|{control}|P|2.4\r"
    "PID|1||{local_id}^^^ZZA^MR||DOE^JANE||19800101|F\r"
)


def msa(ack: str) -> list[str]:
    return next(s for s in ack.split("\r") if s.startswith("MSA|")).split("|")[1:]


def test_replay_changes_nothing_and_answers_the_same(archive: Archive) -> None:
    handler = Hl7Handler(archive.services)
    first = handler.handle(A28.format(control="X1", local_id="A1"))
    again = handler.handle(A28.format(control="X1", local_id="A1"))
    assert msa(first)[0] == msa(again)[0] == "AA"
    assert "duplicate" in msa(again)[2]
    pk = IdentityService(archive.index).resolve("ZZA", "A1")
    assert pk is not None
    assert len(IdentityService(archive.index).history(pk.patient_pk)) == 2  # create + update


def test_message_journalled_by_a_dead_process_is_applied_on_start(archive: Archive) -> None:
    raw = A28.format(control="X2", local_id="A2")
    handler = Hl7Handler(archive.services)
    handler.inbox.journal(Envelope("PAS^ZZA", "X2", "ADT^A28", raw, None))  # then "crash"
    assert IdentityService(archive.index).resolve("ZZA", "A2") is None
    on_free_port = dataclasses.replace(
        archive.services, settings=archive.settings.model_copy(update={"hl7_port": 0})
    )
    listener = Hl7Listener(on_free_port)
    listener.start()
    try:
        assert IdentityService(archive.index).resolve("ZZA", "A2") is not None
        assert [m["status"] for m in InboxReads(archive.index).messages()] == ["applied"]
    finally:
        listener.stop()


def test_refused_message_leaves_no_partial_change(archive: Archive) -> None:
    handler = Hl7Handler(archive.services)
    handler.handle(A28.format(control="X3", local_id="A3"))
    # An A40 whose target exists but whose source is at another trust: nothing may change;
    # the identity service refuses it on the identifiers alone, before reading a record, and
    # queues it for a person (R8), from a trust's own feed too (§2.2 negative test).
    bad = (
        "MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250101||ADT^A40^ADT_A39|X4|P|2.4\r"
        "PID|1||A3^^^ZZA^MR||NEW^NAME||19800101|F\r"
        "MRG|T3^^^ZZB^MR\r"
    )
    code, _, text = msa(handler.handle(bad))[:3]
    assert code == "AE"
    assert "different trusts" in text
    ident = IdentityService(archive.index)
    found = ident.resolve("ZZA", "A3")
    assert found is not None
    assert ident.current_patient_attributes(patient_pk=found.patient_pk)["PatientName"] == (
        "DOE^JANE"
    )
    statuses = {m["control_id"]: m["status"] for m in InboxReads(archive.index).messages()}
    assert statuses == {"X3": "applied", "X4": "rejected"}
    assert [w["kind"] for w in ident.work_queue()] == ["merge-issuer-mismatch"]


def _mllp_exchange(port: int, *messages: str) -> list[str]:
    """Each message framed over one real MLLP connection; the ACK texts."""
    acks = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for m in messages:
            sock.sendall(frame(m.encode()))
            deframer, got = Deframer(), list[bytes]()
            while not got:
                data = sock.recv(65536)
                assert data, "connection closed before the ACK"
                got = deframer.feed(data)
            acks.append(got[0].decode())
    return acks


def test_another_message_under_a_used_control_id_is_refused_not_dropped(
    archive: Archive,
) -> None:
    """A sender whose counter restarted reuses a control ID for a new message: answering it
    "duplicate, AA" would tell the sender it was applied while nothing changed."""
    on_free_port = dataclasses.replace(
        archive.services, settings=archive.settings.model_copy(update={"hl7_port": 0})
    )
    add_sender(archive.index, "PAS", "ZZA", ("127.0.0.1",), None)
    listener = Hl7Listener(on_free_port)
    port = listener.start()
    try:
        first = A28.format(control="X5", local_id="A5")
        resent = first.replace("|20250101|", "|20250102|")  # the same message, re-stamped
        other = A28.format(control="X5", local_id="A6")
        acks = _mllp_exchange(port, first, resent, other, other)
    finally:
        listener.stop()
    assert [msa(a)[0] for a in acks] == ["AA", "AA", "AE", "AE"]
    assert "duplicate" in msa(acks[1])[2]
    _, control, text = msa(acks[2])[:3]
    assert control == "X5"
    assert "already used" in text and "new control ID" in text
    assert any(s.startswith("ERR|") for s in acks[2].split("\r"))
    ident = IdentityService(archive.index)
    assert ident.resolve("ZZA", "A5") is not None
    assert ident.resolve("ZZA", "A6") is None
    journal = InboxReads(archive.index).messages()
    assert sorted(m["status"] for m in journal) == ["applied", "rejected", "rejected"]
    assert [w["kind"] for w in ident.work_queue()] == ["control-id-reused"]


def test_a_message_larger_than_mllp_takes_is_refused_ar_naming_it(archive: Archive) -> None:
    """Before: the connection was closed without an answer, so the sender resent the message
    for ever; now an AR names it (MSA-2) and nothing is stored."""
    on_free_port = dataclasses.replace(
        archive.services, settings=archive.settings.model_copy(update={"hl7_port": 0})
    )
    add_sender(archive.index, "PAS", "ZZA", ("127.0.0.1",), None)
    listener = Hl7Listener(on_free_port)
    port = listener.start()
    huge = A28.format(control="HUGE-1", local_id="A7") + "NTE|1||" + "x" * MAX_MESSAGE_BYTES
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(frame(huge.encode()))
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
    finally:
        listener.stop()
    [ack] = Deframer().feed(reply)
    assert msa(ack.decode())[:2] == ["AR", "HUGE-1"]
    assert "larger than" in msa(ack.decode())[2]
    assert IdentityService(archive.index).resolve("ZZA", "A7") is None
