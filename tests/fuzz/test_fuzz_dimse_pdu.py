"""The fast upper layer's parsers against hostile bytes: A-ASSOCIATE-RQ, P-DATA-TF PDVs and
DIMSE command sets. Only the documented outcome may come out: a parsed value whose parts lie
inside the input, or PduError (which the server answers with A-ABORT)."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from solent.protocols.dimse.ul import dimse, pdu
from solent.protocols.dimse.ul.pdu import PduError
from tests.fuzz.conftest import fuzz_settings


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(value)) + value


def _rq_body() -> bytes:
    body = struct.pack(">H2x16s16s32x", 1, b"SOLENT".ljust(16), b"PEER".ljust(16))
    body += _item(0x10, b"1.2.840.10008.3.1.1.1")
    for cid, abstract in ((1, b"1.2.840.10008.1.1"), (3, b"1.2.840.10008.5.1.4.1.1.2")):
        sub = _item(0x30, abstract) + _item(0x40, b"1.2.840.10008.1.2")
        body += _item(0x20, bytes((cid, 0, 0, 0)) + sub)
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.3")
    user += _item(0x53, struct.pack(">HH", 2, 1))
    uid = b"1.2.840.10008.5.1.4.1.1.2"
    user += _item(0x54, struct.pack(">H", len(uid)) + uid + b"\x00\x01")
    user += _item(0x56, struct.pack(">H", len(uid)) + uid + b"\x01\x00")
    return body + _item(0x50, user)


VALID_RQ = _rq_body()


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "length"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(max_size=32))
        elif op == "length" and pos + 4 <= len(data):
            data[pos + 2 : pos + 4] = struct.pack(">H", draw(st.integers(0, 0xFFFF)))
    return bytes(data)


def test_valid_request_parses() -> None:
    rq = pdu.parse_associate_rq(VALID_RQ)
    assert [c.context_id for c in rq.contexts] == [1, 3]
    assert rq.max_pdu_length == 16384 and rq.async_window == (2, 1)
    assert rq.roles["1.2.840.10008.5.1.4.1.1.2"].scp


@fuzz_settings(0.4)
@given(mutated(VALID_RQ) | st.binary(max_size=300))
def test_associate_rq_parser(data: bytes) -> None:
    try:
        rq = pdu.parse_associate_rq(data)
    except PduError:
        return
    for cx in rq.contexts:
        assert cx.abstract_syntax and cx.transfer_syntaxes
        assert all(len(u) <= 64 for u in (cx.abstract_syntax, *cx.transfer_syntaxes))


@fuzz_settings(0.3)
@given(st.binary(max_size=400))
def test_pdv_walker(data: bytes) -> None:
    try:
        found = list(pdu.pdvs(memoryview(data)))
    except PduError:
        return
    assert sum(len(v) + 6 for _, _, v in found) == len(data)


COMMAND = dimse.encode(
    CommandField=dimse.C_STORE_RQ,
    MessageID=7,
    Priority=0,
    CommandDataSetType=0,
    AffectedSOPClassUID="1.2.840.10008.5.1.4.1.1.2",
    AffectedSOPInstanceUID="1.2.3.4.5",
)


@fuzz_settings(0.3)
@given(mutated(COMMAND) | st.binary(max_size=200))
def test_command_set_decoder(data: bytes) -> None:
    try:
        cmd = dimse.decode(data)
    except PduError:
        return
    assert isinstance(cmd.command_field, int)


@fuzz_settings(0.2)
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.from_regex(r"[0-9]{1,8}(\.[0-9]{1,8}){1,6}", fullmatch=True),
)
def test_command_round_trip(field: int, msg_id: int, uid: str) -> None:
    cmd = dimse.decode(
        dimse.encode(
            CommandField=field,
            MessageID=msg_id,
            AffectedSOPInstanceUID=uid,
            CommandDataSetType=dimse.NO_DATASET,
        )
    )
    assert (cmd.command_field, cmd.number("MessageID")) == (field, msg_id)
    assert cmd.text("AffectedSOPInstanceUID") == uid
    assert not cmd.has_dataset
