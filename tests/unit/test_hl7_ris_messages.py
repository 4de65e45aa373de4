"""R57: the HL7 v2.5 message that tells a trust's RIS of a study edit. A RIS reads it with an
ordinary HL7 library (python-hl7 here) and finds the study's new patient (local ID with its
issuer, NHS number), the accession and the Study Instance UID where IHE radiology puts them;
values holding HL7 delimiters come back exactly as they were; an accession correction names
the old order (RU) and its replacement (RO)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime

import hl7
import pytest

from solent.domain.records import DestinationRow
from solent.protocols.hl7.er7 import Message
from solent.protocols.hl7.mllp import Deframer, frame
from solent.protocols.hl7.ris import NoAnswer, RisSender, build_notification, read_ack
from solent.services.ris_notify import RisNotice, RisPatient

STUDY = "1.2.826.0.1.3680043.8.498.4242"
RIS = DestinationRow("ZZB", "127.0.0.1", 2575, "CRIS", "ZZB")
ALICE = RisPatient("ZZB", "B7730021", "9434765919", "SMITH^ALICE^J", "19700102", "F")
BOB = RisPatient("ZZB", "B7730444", None, "JONES^BOB", "19650304", "M")
MOVED = RisNotice(
    destination=RIS,
    control_id="SOLENT17.ZZB",
    at=datetime(2026, 12, 6, 9, 30, 5, tzinfo=UTC),
    kind="study.moved",
    order_control="XO",
    patient=ALICE,
    prior_patient=BOB,
    study_uid=STUDY,
    study_description="CT HEAD",
    modality="CT",
    accession=("ZZB0042", "ZZB"),
    old_accession=None,
    reason="filed under the wrong patient",
    edit=7,
    steps={"ZZB0042": ("RP0042", "SPS0042")},
)


def _parse(text: str) -> hl7.Message:
    assert text.endswith("\r") and "\n" not in text
    return hl7.parse(text)


def test_a_move_is_an_order_change_under_the_new_patient() -> None:
    msg = _parse(build_notification(MOVED))
    assert str(msg.segment("MSH")[9]) == "OMI^O23^OMI_O23"
    assert str(msg["MSH.F10"]) == "SOLENT17.ZZB"
    assert (str(msg["MSH.F5"]), str(msg["MSH.F6"])) == ("CRIS", "ZZB")
    assert (str(msg["MSH.F12"]), str(msg["MSH.F18"])) == ("2.5", "UNICODE UTF-8")
    assert str(msg["MSH.F7"]) == "20261206093005+0000"
    ids = [(str(r[0]), str(r[3]), str(r[4])) for r in msg.segment("PID")[3]]
    assert ids == [("B7730021", "ZZB", "MR"), ("9434765919", "NHS", "NH")]
    assert str(msg["PID.F5.R1.C1"]) == "SMITH" and str(msg["PID.F5.R1.C2"]) == "ALICE"
    assert (str(msg["PID.F7"]), str(msg["PID.F8"])) == ("19700102", "F")
    assert str(msg["ORC.F1"]) == "XO"
    assert (str(msg["ORC.F3.R1.C1"]), str(msg["ORC.F3.R1.C2"])) == ("ZZB0042", "ZZB")
    assert str(msg["OBR.F3.R1.C1"]) == "ZZB0042" and str(msg["OBR.F18"]) == "ZZB0042"
    assert str(msg["OBR.F4.R1.C2"]) == "CT HEAD"
    assert str(msg["IPC.F1.R1.C1"]) == "ZZB0042" and str(msg["IPC.F3"]) == STUDY
    assert str(msg["IPC.F5.R1.C1"]) == "CT"
    assert (str(msg["IPC.F2"]), str(msg["IPC.F4"])) == ("RP0042", "SPS0042")  # the order's
    assert str(msg["ORC.F16.R1.C1"]) == "study.moved"
    note = str(msg["NTE.F3"])
    assert "B7730444 (ZZB)" in note and "B7730021 (ZZB)" in note and "study edit 7" in note
    # Our own inbound reader takes it too (the structure is what the MLLP listener accepts).
    assert Message(build_notification(MOVED)).header.message_type == "OMI^O23"


def test_delimiters_in_values_are_escaped_and_read_back_unchanged() -> None:
    tricky = "mix|up ^ of & records ~ at A\\E\r\nsee ticket"
    notice = replace(
        MOVED,
        reason=tricky,
        study_description="CT|HEAD^&~",
        patient=replace(ALICE, name="O'NEIL|X^ANN&MARIE"),
    )
    text = build_notification(notice)
    msg = _parse(text)
    # Every segment keeps its shape: one line per segment, fields where they belong.
    assert [str(s[0]) for s in msg] == ["MSH", "PID", "ORC", "OBR", "NTE", "IPC"]
    assert str(msg["IPC.F3"]) == STUDY and str(msg["ORC.F1"]) == "XO"
    # python-hl7's accessor unescapes: the values read are the values sent (a line break in
    # a reason is no segment break: it goes as spaces).
    assert str(msg["ORC.F16.R1.C2"]) == tricky.replace("\r\n", "  ")
    assert str(msg["OBR.F4.R1.C2"]) == "CT|HEAD^&~"
    assert str(msg["PID.F5.R1.C1"]) == "O'NEIL|X"
    assert str(msg["PID.F5.R1.C2"]) == "ANN&MARIE"
    assert "mix\\F\\up" in text  # escaped on the wire


def test_an_accession_correction_replaces_the_old_order_by_the_new() -> None:
    notice = replace(
        MOVED,
        kind="study.accession-corrected",
        order_control="RU",
        prior_patient=None,
        accession=("ZZB99FIX", "ZZB"),
        old_accession=("ZZB0042", "ZZB"),
    )
    msg = _parse(build_notification(notice))
    orders = [
        (str(orc[1]), str(orc[3][0][0]))
        for orc in msg.segments("ORC")  # one ORDER group each
    ]
    assert orders == [("RU", "ZZB0042"), ("RO", "ZZB99FIX")]
    assert [str(o[18]) for o in msg.segments("OBR")] == ["ZZB0042", "ZZB99FIX"]
    assert [str(i[3]) for i in msg.segments("IPC")] == [STUDY, STUDY]
    assert str(msg["PID.F3.R1.C1"]) == "B7730021"


def test_a_patient_without_nhs_number_or_accession_still_makes_a_valid_message() -> None:
    notice = replace(MOVED, patient=BOB, accession=None, modality=None, study_description=None)
    msg = _parse(build_notification(notice))
    assert [str(r[0]) for r in msg.segment("PID")[3]] == ["B7730444"]
    assert str(msg["ORC.F3"]) == "" and str(msg["IPC.F3"]) == STUDY
    assert (str(msg["IPC.F2"]), str(msg["IPC.F4"])) == ("", "")  # no order known
    assert str(msg["OBR.F4.R1.C2"]) == "Imaging study"


def test_the_ack_is_read_for_this_message_only() -> None:
    ack = "MSH|^~\\&|CRIS|ZZB|SOLENT|PACS|20261206||ACK^O23^ACK|A1|P|2.5\rMSA|{}|{}|{}\r"
    assert read_ack(ack.format("AA", "SOLENT17.ZZB", ""), "SOLENT17.ZZB") == ("AA", "")
    assert read_ack(ack.format("AE", "SOLENT17.ZZB", "busy"), "SOLENT17.ZZB") == ("AE", "busy")
    code, why = read_ack(ack.format("AA", "OTHER", ""), "SOLENT17.ZZB")
    assert code == "" and "OTHER" in why
    assert read_ack("MSH|^~\\&|X|Y\r", "SOLENT17.ZZB")[0] == ""
    assert read_ack("garbage", "SOLENT17.ZZB")[0] == ""


def test_control_characters_in_a_value_neither_end_a_segment_nor_the_mllp_frame() -> None:
    """A reason typed with FS+CR (MLLP's end block) or VT (its start block) ended the frame
    early: the RIS read a message cut inside the ORC and then bytes outside any frame."""
    notice = replace(
        MOVED,
        reason="wrong\x1c\rMSH|x\x0bpatient\ttoo",
        study_description="CT\x1c\rHEAD",
        patient=replace(ALICE, name="SMITH\x1c\r^ALICE"),
    )
    received = Deframer().feed(frame(build_notification(notice).encode("utf-8")))
    assert len(received) == 1
    msg = _parse(received[0].decode("utf-8"))
    assert [str(s[0]) for s in msg] == ["MSH", "PID", "ORC", "OBR", "NTE", "IPC"]
    assert str(msg["ORC.F16.R1.C2"]) == "wrong  MSH|x patient too"
    assert str(msg["PID.F5.R1.C2"]) == "ALICE" and str(msg["OBR.F18"]) == "ZZB0042"


def test_a_ris_trickling_bytes_is_no_answer_within_the_timeout() -> None:
    """A RIS that sent one byte every so often (each within the socket timeout) held the
    sender, and the job's worker, as long as it liked; the timeout bounds the whole ACK."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def trickle() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                for byte in b"\x0bMSH|^~\\&|RIS|ZZB" * 4:
                    time.sleep(0.05)
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        return

        threading.Thread(target=trickle, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(NoAnswer, match="within the timeout"):
            RisSender(timeout=0.5)(replace(MOVED, destination=replace(RIS, port=port)))
        # The trickle lasts 3.4 s: well under it, with room for a loaded CI machine.
        assert time.monotonic() - started < 2.5
