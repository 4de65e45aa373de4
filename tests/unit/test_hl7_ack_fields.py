"""What an interface engine checks in an ACK before it moves on to the next message: MSA-2
names the message (even one refused as unreadable), MSH-11 and MSH-18 match the message, and a
version that is not HL7 v2 is refused with the table 0357 code for it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from solent.app import Archive
from solent.domain.principal import SYSTEM
from solent.protocols.hl7.handler import Hl7Handler
from solent.protocols.hl7.senders import SenderGate
from tests.unit.security_fixtures import demo, demo_template

__all__ = ["demo", "demo_template"]

LOCAL = "127.0.0.1:40000"


def _handler(archive: Archive) -> Hl7Handler:
    s = archive.services
    return Hl7Handler(s, gate=SenderGate(s.directory, s.audit))


def _segments(ack: str) -> dict[str, list[str]]:
    return {seg[:3]: seg.split("|") for seg in ack.strip("\r").split("\r")}


def _a08(msh_tail: str, *, msh9: str = "ADT^A08^ADT_A01", control: str = "CTL-1") -> str:
    return (
        f"MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250320093000||{msh9}|{control}|{msh_tail}\r"
        "EVN|A08|20250320093000\r"
        "PID|1||A100001^^^ZZA^MR||DEMO^ALICE||19580312|F\r"
    )


@pytest.mark.parametrize(
    ("msh9", "why"),
    [("ADT", "MSH-9 (message type)"), ("", "MSH-9 (message type)")],
)
def test_a_refused_unreadable_header_still_names_the_message(
    demo: Archive, msh9: str, why: str
) -> None:
    """Before: MSA-2 was empty, so the sender could not match the AR to its message."""
    ack = _segments(_handler(demo).handle(_a08("P|2.4", msh9=msh9, control="NT-1"), LOCAL))
    assert ack["MSA"][1:3] == ["AR", "NT-1"]
    assert why in ack["MSA"][3]
    assert ack["MSH"][2:6] == ["PACS", "ZZX", "PAS", "ZZA"]


def test_the_ack_keeps_the_processing_id_and_character_set(demo: Archive) -> None:
    tail = "T|2.5|||AL|NE|GBR|8859/1|EN"
    reply = _handler(demo).handle_bytes(_a08(tail).encode("latin-1"), LOCAL)
    ack = _segments(reply.decode("latin-1"))
    assert ack["MSA"][1:3] == ["AA", "CTL-1"]
    assert ack["MSH"][10] == "T"  # MSH-11, was always P
    assert ack["MSH"][17] == "8859/1"  # MSH-18


def test_an_8859_1_ack_is_sent_in_8859_1(demo: Archive) -> None:
    """A refusal that quotes the message (here an identifier with é) in the sender's charset."""
    msg = (
        "MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250320093000||ADT^A08^ADT_A01|CS-2|P|2.4|||||GBR|8859/1\r"
        "EVN|A08|20250320093000\r"
        "PID|1||Aé1^^^ZZB^MR||DEMO^ALICE||19580312|F\r"
    )
    reply = _handler(demo).handle_bytes(msg.encode("latin-1"), LOCAL)
    assert "Aé1".encode("latin-1") in reply
    assert "Aé1".encode() not in reply


@pytest.mark.parametrize(
    ("charset", "name"),
    [("8859/2", "WÓJCIK^ŁUCJA"), ("8859/15", "ŽIŽEK^ŠÁRKA"), ("UNICODE UTF-8", "WÓJCIK^ŁUCJA")],
)
def test_a_message_is_read_in_the_character_set_msh_18_names(
    demo: Archive, charset: str, name: str
) -> None:
    """Before: every message not valid UTF-8 was read as Latin-1, whatever MSH-18 said, so a
    Polish name sent in 8859/2 was stored as "£UCJA" (and its ACK went back in 8859/2)."""
    codec = {"8859/2": "iso8859_2", "8859/15": "iso8859_15"}.get(charset, "utf-8")
    msg = (
        f"MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250320093000||ADT^A08^ADT_A01|CS-{charset}|P|2.4"
        f"|||||GBR|{charset}\r"
        "EVN|A08|20250320093000\r"
        f"PID|1||A100001^^^ZZA^MR||{name}||19580312|F\r"
    )
    reply = _handler(demo).handle_bytes(msg.encode(codec), LOCAL)
    assert _segments(reply.decode(codec))["MSA"][1] == "AA"
    person = demo.services.records
    pk = person.person(SYSTEM, issuer="ZZA", local_id="A100001").named_pk
    assert pk is not None
    assert person.patient_record(SYSTEM, pk)["record"]["name"] == name


def test_a_version_that_is_not_hl7_v2_is_refused_with_203(demo: Archive) -> None:
    """Before: a message claiming version 3.0 was applied (AA) as if it were v2.4."""
    ack = _segments(_handler(demo).handle(_a08("P|3.0", control="V3-1"), LOCAL))
    assert ack["MSA"][1:3] == ["AR", "V3-1"]
    assert ack["ERR"][3].split("^")[0] == "203"
    ok = _segments(_handler(demo).handle(_a08("P|2.5.1", control="V251-1"), LOCAL))
    assert ok["MSA"][1] == "AA"


@pytest.mark.parametrize("dob", ["99999999", "19581312", "19580230"])
def test_a_date_of_birth_that_is_no_calendar_date_is_refused(demo: Archive, dob: str) -> None:
    """Before: any 8 digits were stored as the birth date (AA), and the FHIR Patient of the
    record then failed to render."""
    msg = _a08_for("DOB-1", "A100001", "DEMO^ALICE", dob=dob)
    ack = _segments(_handler(demo).handle(msg, LOCAL))
    assert ack["MSA"][1:3] == ["AE", "DOB-1"] and "PID-7" in ack["MSA"][3]
    person = demo.services.records
    pk = person.person(SYSTEM, issuer="ZZA", local_id="A100001").named_pk
    assert pk is not None
    assert person.patient_record(SYSTEM, pk)["record"]["birth_date"] == "19580312"


def test_a_date_of_birth_in_the_future_is_refused_and_tomorrow_is_not(demo: Archive) -> None:
    """Before: 29990101 was stored as the patient's birth date (AA). Tomorrow (UTC) is taken: a
    baby born after midnight UK summer time is born "tomorrow" for a server on UTC."""
    future = (datetime.now(UTC).date() + timedelta(days=2)).strftime("%Y%m%d")
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).strftime("%Y%m%d")
    for control, dob in (("DOB-F1", "29990101"), ("DOB-F2", future)):
        ack = _segments(
            _handler(demo).handle(_a08_for(control, "A100001", "DEMO^ALICE", dob), LOCAL)
        )
        assert ack["MSA"][1:3] == ["AE", control] and "in the future" in ack["MSA"][3]
    records = demo.services.records
    pk = records.person(SYSTEM, issuer="ZZA", local_id="A100001").named_pk
    assert pk is not None
    assert records.patient_record(SYSTEM, pk)["record"]["birth_date"] == "19580312"
    ack = _segments(
        _handler(demo).handle(_a08_for("DOB-T", "A100001", "DEMO^ALICE", tomorrow), LOCAL)
    )
    assert ack["MSA"][1] == "AA"
    assert records.patient_record(SYSTEM, pk)["record"]["birth_date"] == tomorrow


def test_escapes_expand_boundedly_and_a_malformed_one_reads_as_nothing(demo: Archive) -> None:
    """Before: a name \\.sp2000000000\\ made two billion line breaks in the server (gigabytes
    from 18 bytes), \\.brzz\\ raised out of the parser (no ACK: the sender retried for ever)
    and \\Xzz\\ logged a traceback. Now each reads as at most a few characters, and the
    message is answered."""
    for control, name in (
        ("ESC-1", "DEMO\\.sp2000000000\\^ALICE"),
        ("ESC-2", "DEMO\\.brzz\\^ALICE"),
        ("ESC-3", "DEMO\\Xzz\\^ALICE"),
        ("ESC-4", "DEMO\\X00\\^ALICE"),  # a NUL by escape: PostgreSQL stores no NUL
    ):
        ack = _segments(_handler(demo).handle(_a08_for(control, "A100001", name), LOCAL))
        assert ack["MSA"][2] == control and ack["MSA"][1] in ("AA", "AE"), ack
    records = demo.services.records
    pk = records.person(SYSTEM, issuer="ZZA", local_id="A100001").named_pk
    assert pk is not None
    stored = records.patient_record(SYSTEM, pk)["record"]["name"]
    assert "\x00" not in stored and len(stored) < 100


def test_a_local_id_no_dicom_patient_id_can_hold_is_refused_and_spaces_are_no_part_of_it(
    demo: Archive,
) -> None:
    """Before: PID-3 ``A1\\E\\B`` made a record A1\\B (a backslash splits a DICOM Patient ID in
    two) and `` A1 `` a record whose ID never matched its images' "A1"."""
    ack = _segments(_handler(demo).handle(_a08_for("ID-1", "A1\\E\\B", "DEMO^BACK"), LOCAL))
    assert ack["MSA"][1:3] == ["AE", "ID-1"] and "backslash" in ack["MSA"][3]
    assert demo.identity.resolve("ZZA", "A1\\B") is None
    ack = _segments(_handler(demo).handle(_a08_for("ID-2", " A100009 ", "DEMO^SPACE"), LOCAL))
    assert ack["MSA"][1] == "AA"
    assert demo.identity.resolve("ZZA", "A100009") is not None
    assert demo.identity.resolve("ZZA", " A100009 ") is None
    ack = _segments(_handler(demo).handle(_a08_for("ID-3", "   ", "DEMO^BLANK"), LOCAL))
    assert ack["MSA"][1] == "AE" and demo.identity.resolve("ZZA", "") is None


@pytest.mark.parametrize("delimiters", ["^^\\&", "A~\\&", "^~\\ "])
def test_delimiters_that_cannot_be_read_are_refused(demo: Archive, delimiters: str) -> None:
    """MSH-2 with a delimiter twice, a letter or a space: AR, nothing applied."""
    msg = _a08_for("DLM-1", "A100001", "DEMO^ALICE").replace("^~\\&", delimiters, 1)
    ack = _segments(_handler(demo).handle(msg, LOCAL))
    assert ack["MSA"][1] == "AR" and "delimiters" in ack["MSA"][3]


def test_a_message_with_a_nul_character_is_refused_and_changes_nothing(demo: Archive) -> None:
    """Before: AA and the NUL stored in the name on SQLite; on PostgreSQL the journal insert
    failed and the sender got no answer at all."""
    msg = _a08_for("NUL-1", "A100001", "DEMO^AL\x00ICE")
    ack = _segments(_handler(demo).handle_bytes(msg.encode(), LOCAL).decode())
    assert ack["MSA"][1:3] == ["AR", "NUL-1"] and "NUL" in ack["MSA"][3]
    person = demo.services.records
    pk = person.person(SYSTEM, issuer="ZZA", local_id="A100001").named_pk
    assert pk is not None
    assert person.patient_record(SYSTEM, pk)["record"]["name"] == "DEMO^ALICE"


def _a08_for(control: str, local_id: str, name: str, dob: str = "19580312") -> str:
    return (
        f"MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250320093000||ADT^A08^ADT_A01|{control}|P|2.4\r"
        "EVN|A08|20250320093000\r"
        f"PID|1||{local_id}^^^ZZA^MR||{name}||{dob}|F\r"
    )


def test_a_batch_is_applied_message_by_message_and_answered_as_a_batch(demo: Archive) -> None:
    """A PAS replay sent as FHS/BHS ... BTS/FTS in one frame. Before: one AR for the whole
    batch ("must start with an MSH segment"), nothing applied, no message named."""
    batch = (
        "FHS|^~\\&|PAS|ZZA|PACS|ZZX|20250320093000||||FILE-7\r"
        "BHS|^~\\&|PAS|ZZA|PACS|ZZX|20250320093000||||BATCH-42\r"
        + _a08_for("B-1", "A100001", "DEMO^ALICE^BATCHED")
        + _a08_for("B-2", "A100002", "DEMO^ERIN", dob="1990")  # no YYYYMMDD: refused, AE
        + "BTS|2\rFTS|1\r"
    )
    reply = _handler(demo).handle_bytes(batch.encode(), LOCAL).decode()
    segments = reply.strip("\r").split("\r")
    assert [s[:3] for s in segments] == [
        "FHS", "BHS", "MSH", "MSA", "MSH", "MSA", "ERR", "BTS", "FTS",
    ]  # fmt: skip
    bhs = segments[1].split("|")
    assert bhs[2:6] == ["PACS", "ZZX", "PAS", "ZZA"] and bhs[11] == "BATCH-42"  # BHS-12
    assert segments[0].split("|")[11] == "FILE-7"
    msas = [s.split("|")[1:3] for s in segments if s.startswith("MSA")]
    assert msas == [["AA", "B-1"], ["AE", "B-2"]]
    assert segments[-2] == "BTS|2"
    records = demo.services.records
    pk = records.person(SYSTEM, issuer="ZZA", local_id="A100001").named_pk
    assert pk is not None
    assert records.patient_record(SYSTEM, pk)["record"]["name"] == "DEMO^ALICE^BATCHED"
    # A replay of the same batch changes nothing and answers the same.
    again = _handler(demo).handle_bytes(batch.encode(), LOCAL).decode()
    assert [s.split("|")[1:3] for s in again.split("\r") if s.startswith("MSA")] == msas
