"""HL7 v2 from hostile senders: MLLP framing, the ER7 parser and the whole message handler.

Only the documented outcomes may come out: FramingError from the deframer, a rejection (AR/AE)
from the parser, an ACK string from the handler; and a refused message changes no patient.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from solent.app import Archive, build_archive
from solent.settings import load_settings
from tests.fuzz.conftest import fuzz_settings

hl7_mllp = pytest.importorskip("solent.protocols.hl7.mllp")

SAMPLES = [
    "MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250320093000||ADT^A08^ADT_A01|ZZA0000098765|P|2.4|||||GBR||EN\r"
    "EVN|A08|20250320093000|||PASCLERK2^CLERK^SAM||ZZA\r"
    "PID|1||A123456^^^ZZA^MR~9990000026^^^NHS^NH||CARTER^JAMES^PAUL^^MR||19620417|M|||"
    "5 NEW ROAD^^NEWTOWN^^XX2 2XX^GBR^H||01632 960123^PRN^PH|||||||||||||||||||NSTS01\r"
    "PD1|||EXAMPLE SURGERY^^Y99999|G9999998^GP^ALEX^^^DR\rPV1|1|N\r",
    "MSH|^~\\&|PAS|ZZB|PACS|ZZX|20250321101500||ADT^A40^ADT_A39|ZZB0000123999|P|2.4\r"
    "EVN|A40|20250321101500\r"
    "PID|1||B7654321^^^ZZB^MR~9990000026^^^NHS^NH||CARTER^JAMES||19620417|M\r"
    "MRG|B9990001^^^ZZB^MR\r",
    "MSH|^~\\&|RIS|ZZB|PACS|ZZX|20250322080000||ORM^O01^ORM_O01|ZZB-RIS-777|P|2.4\r"
    "PID|1||B7654321^^^ZZB^MR||CARTER^JAMES||19620417|M\r"
    "ORC|NW|PLC123|ACC0001\rOBR|1|PLC123|ACC0001|CTHEAD^CT Head^LOCAL|||20250322080000"
    "||||||||||||||ACC0001||CT\r",
]
ALPHABET = st.characters(codec="utf-8", exclude_categories=("Cs",))


@st.composite
def mutated_message(draw: st.DrawFn) -> str:
    text = list(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 10))):
        if not text:
            break
        at = draw(st.integers(0, len(text) - 1))
        op = draw(st.sampled_from(["replace", "insert", "delete", "delimiter", "segment"]))
        if op == "replace":
            text[at] = draw(ALPHABET)
        elif op == "insert":
            text[at:at] = list(draw(st.text(ALPHABET, max_size=40)))
        elif op == "delete":
            del text[at : at + draw(st.integers(1, 40))]
        elif op == "delimiter":
            text[at] = draw(st.sampled_from(list("|^~\\&\r\n")))
        else:
            text[at:at] = list(
                "\r" + draw(st.sampled_from(["PID", "MSH", "MRG", "OBR", "ZZZ"])) + "|"
            )
    return "".join(text)


messages = st.one_of(mutated_message(), st.text(ALPHABET, max_size=400))


@fuzz_settings()
@given(chunks=st.lists(st.binary(max_size=200), max_size=10))
def test_mllp_deframer_only_frames_or_refuses(chunks: list[bytes]) -> None:
    deframer = hl7_mllp.Deframer(max_bytes=4096)
    for chunk in chunks:
        try:
            for message in deframer.feed(chunk):
                assert isinstance(message, bytes)
        except hl7_mllp.FramingError:
            return


@fuzz_settings()
@given(raw=messages)
def test_er7_parser_accepts_or_rejects(raw: str) -> None:
    er7 = pytest.importorskip("solent.protocols.hl7.er7")
    try:
        msg = er7.Message(raw)
    except er7.MessageRejected as exc:
        assert exc.code in ("AE", "AR") and exc.reason
        return
    assert msg.header.control_id


@pytest.fixture(scope="module")
def hl7_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    archive = build_archive(
        load_settings(environ={}, data_dir=tmp_path_factory.mktemp("hl7") / "v")
    )
    for code in ("ZZA", "ZZB", "ZZX"):
        archive.index.add_trust(code, f"Trust {code}")
    yield archive
    archive.close()


def _patients(archive: Archive) -> list[tuple[object, ...]]:
    with archive.index.engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql("SELECT * FROM patient ORDER BY pk")]


@fuzz_settings(share=0.05)
@given(raw=messages)
def test_handler_always_acknowledges(hl7_archive: Archive, raw: str) -> None:
    handler_mod = pytest.importorskip("solent.protocols.hl7.handler")
    handler = handler_mod.Hl7Handler(hl7_archive.services)
    before = _patients(hl7_archive)
    ack = handler.handle(raw, "127.0.0.1")
    assert isinstance(ack, str) and ack.startswith("MSH")
    codes = [seg.split("|")[1] for seg in ack.split("\r") if seg.startswith("MSA|")]
    assert len(codes) == 1 and codes[0] in ("AA", "AE", "AR", "CA", "CE", "CR"), ack
    if codes[0] in ("AE", "AR", "CE", "CR"):
        assert _patients(hl7_archive) == before, "a refused message changed patient records"
