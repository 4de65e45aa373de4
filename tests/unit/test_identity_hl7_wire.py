"""MLLP framing, ER7 reading and ACK writing of the HL7 adapter."""

from __future__ import annotations

import pytest

from solent.protocols.hl7.ack import build_ack, escape
from solent.protocols.hl7.er7 import Message, MessageRejected, demographics, local_key
from solent.protocols.hl7.mllp import Deframer, FramingError, frame

PID_MSG = (
    "MSH|^~\\&|PAS|ZZB|PACS|ZZX|20250314101500||ADT^A40^ADT_A39|C1|P|2.4\r"
    "PID|1||B7654321^^^ZZB^MR~9990000026^^^NHS^NH||CARTER^JAMES^PAUL^^MR||19620417|M|||"
    "12 EXAMPLE STREET^^EXAMPLETOWN^^XX1 1XX^GBR^H||01632 960001^PRN^PH|||||||||||||||||||NSTS01\r"
    "MRG|BTMP000812^^^ZZB^MR||||||UNKNOWN^MALE\r"
)


def test_deframer_splits_and_joins_frames() -> None:
    d = Deframer()
    wire = frame(b"one") + frame(b"two")
    assert d.feed(wire[:4]) == []
    assert d.feed(wire[4:]) == [b"one", b"two"]


def test_deframer_refuses_bytes_outside_frames_and_huge_messages() -> None:
    with pytest.raises(FramingError):
        Deframer().feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(FramingError):
        Deframer(max_bytes=10).feed(b"\x0b" + b"x" * 20)


def test_reads_identifiers_demographics_and_status() -> None:
    msg = Message(PID_MSG)
    assert msg.header.sender == "PAS^ZZB"
    assert msg.header.message_type == "ADT^A40"
    pid = msg.need("PID")
    assert local_key(msg, pid, issuer="ZZB").local_id == "B7654321"
    demo = demographics(msg, pid)
    assert demo.name == "CARTER^JAMES^PAUL"
    assert (demo.birth_date, demo.sex) == ("19620417", "M")
    assert (demo.nhs_number, demo.nhs_status) == ("9990000026", "NSTS01")
    assert demo.address is not None and demo.address.startswith("12 EXAMPLE STREET")
    assert local_key(msg, msg.need("MRG"), issuer=None, n=1).local_id == "BTMP000812"


def test_a_trust_may_not_update_another_trusts_record() -> None:
    msg = Message(PID_MSG)
    with pytest.raises(MessageRejected, match="only update its own records"):
        local_key(msg, msg.need("PID"), issuer="ZZA")


def test_cx_with_universal_id_authority() -> None:
    msg = Message(PID_MSG)
    cx = msg.cx("9990000026^^^&2.16.840.1.113883.2.1.4.1&ISO")
    assert (cx.id, cx.authority) == ("9990000026", "2.16.840.1.113883.2.1.4.1")


@pytest.mark.parametrize(
    "raw",
    ["", "hello", "MSH|^~\\&|A|B|C|D|2025||ADT^A01|", "MSH|^~\\&|A||C|D|2025||ADT^A01|X|P|2.4"],
)
def test_unreadable_messages_are_rejected_ar(raw: str) -> None:
    with pytest.raises(MessageRejected) as info:
        Message(raw)
    assert info.value.code == "AR"


def test_ack_echoes_control_id_and_escapes_the_reason() -> None:
    ack = build_ack(Message(PID_MSG), "AE", "bad | field ^ here")
    segments = ack.strip("\r").split("\r")
    assert segments[0].startswith("MSH|^~\\&|PACS|ZZX|PAS|ZZB|")
    assert segments[1] == "MSA|AE|C1|" + escape("bad | field ^ here")
    assert segments[2].startswith("ERR|")
    assert "|" not in escape("a|b")


def test_deframer_takes_an_end_block_without_its_carriage_return() -> None:
    """Some senders end a frame with <FS> alone: waiting for the <CR> would leave the message
    unanswered until the sender times out."""
    d = Deframer()
    assert d.feed(b"\x0bone\x1c") == [b"one"]
    assert d.feed(b"\r\n\x0btwo\x1c\x0bthree\x1c\r") == [b"two", b"three"]
    assert d.buffer == bytearray()


@pytest.mark.parametrize(
    ("reason", "number"),
    [
        ("unsupported message type SIU^S12", "200"),
        ("unsupported event ADT^A99", "201"),
        ("MSH-10 control ID C1 was already used by PAS^ZZB for a different message", "205"),
        ("MSH-4 (sending facility: the trust's ODS code) is empty", "101"),
        ("merge across assigning authorities refused", "207"),
    ],
)
def test_err_carries_the_table_0357_code_for_v24_and_v25_readers(reason: str, number: str) -> None:
    err = build_ack(Message(PID_MSG), "AE", reason).strip("\r").split("\r")[2].split("|")
    assert err[1].split("^")[3].split("&")[0] == number  # ERR-1 (v2.4 ELD, CE in component 4)
    assert err[3].split("^")[0] == number  # ERR-3 (v2.5 HL7 error code)
    assert err[4] == "E"  # ERR-4 severity
