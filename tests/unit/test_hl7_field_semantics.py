"""What an EPR's PAS means by the fields of PID/PD1, read the way HL7 v2 defines them.

An empty field means "not sent, keep what you have"; a field sent as ``""`` means "erase it"
(HL7 v2 section 2.5.3, the ITK ADT specification follows it). Address type codes and v2.5
telephone layouts are how real PAS feeds send ordinary data.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from solent.app import Archive, build_archive
from solent.domain.principal import SYSTEM, Principal, PrincipalKind
from solent.index.schema import hl7_message, orders
from solent.protocols.hl7.er7 import Message, demographics
from solent.protocols.hl7.handler import Hl7Handler
from solent.protocols.hl7.senders import SenderGate
from solent.services.identity import Change
from solent.services.inbox import Envelope
from solent.settings import load_settings
from tests.unit.security_fixtures import demo, demo_template

__all__ = ["demo", "demo_template"]

LOCAL = "127.0.0.1:40000"  # the demo feeds are registered from this machine


def _a08(control: str, pid_tail: str, pd1: str = "") -> str:
    return (
        f"MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250320093000||ADT^A08^ADT_A01|{control}|P|2.4\r"
        "EVN|A08|20250320093000\r"
        f"PID|1||A100001^^^ZZA^MR|{pid_tail}\r" + (f"{pd1}\r" if pd1 else "") + "PV1|1|N\r"
    )


def test_double_quotes_erase_and_empty_fields_keep() -> None:
    demo_ = demographics(
        m := Message(_a08("C1", '|DEMO^ALICE||""|""|||""||""', 'PD1|||""|""')),
        m.need("PID"),
    )
    assert (demo_.birth_date, demo_.sex, demo_.address, demo_.phone) == ("", "", "", "")
    assert (demo_.gp_practice, demo_.gp) == ("", "")
    kept = demographics(m := Message(_a08("C2", "|DEMO^ALICE")), m.need("PID"))
    assert (kept.birth_date, kept.sex, kept.address, kept.phone) == (None, None, None, None)


def test_address_type_code_is_not_part_of_the_address() -> None:
    msg = Message(_a08("C3", "|DEMO^ALICE||19580312|F|||5 NEW ROAD^^NEWTOWN^^XX2 2XX^GBR^H"))
    assert demographics(msg, msg.need("PID")).address == "5 NEW ROAD, NEWTOWN, XX2 2XX, GBR"


def test_v25_telephone_without_xtn1_is_read() -> None:
    """XTN.1 is deprecated in v2.5; Epic/Cerner-style feeds send the parts or XTN.12."""
    parts = Message(_a08("C4", "|DEMO^ALICE||19580312|F|||||^PRN^PH^^44^1632^960123"))
    assert demographics(parts, parts.need("PID")).phone == "+44 1632 960123"
    whole = Message(_a08("C5", "|DEMO^ALICE||19580312|F|||||^PRN^PH^^^^^^^^^01632960123"))
    assert demographics(whole, whole.need("PID")).phone == "01632960123"


def _record(archive: Archive) -> tuple[dict[str, object], dict[str, object]]:
    person = archive.services.records
    pk = person.person(SYSTEM, issuer="ZZA", local_id="A100001").named_pk
    assert pk is not None
    found = person.patient_record(SYSTEM, pk)
    return found["record"], found["contact"] or {}


def test_an_a08_with_double_quotes_erases_the_record_fields(demo: Archive) -> None:
    s = demo.services
    handler = Hl7Handler(s, gate=SenderGate(s.directory, s.audit))
    set_ = _a08("SET-1", "|DEMO^ALICE||19580312|F|||1 A ST^^TOWN^^AB1 2CD^GBR^H||01632 960001")
    assert "MSA|AA|SET-1|" in handler.handle(set_, LOCAL)
    record, contact = _record(demo)
    assert (record["sex"], contact["address"], contact["phone"]) == (
        "F",
        "1 A ST, TOWN, AB1 2CD, GBR",
        "01632 960001",
    )
    erase = _a08("ERASE-1", '|DEMO^ALICE||19580312|""|||""||""')
    assert "MSA|AA|ERASE-1|" in handler.handle(erase, LOCAL)
    record, contact = _record(demo)
    # Before the fix: sex became "O" (other) and the address and phone the text '""'.
    assert (record["sex"], contact["address"], contact["phone"]) == ("", "", "")


def test_formatted_text_line_breaks_are_line_feeds() -> None:
    """CRIS-style FT reports break lines with \\.br\\; before, they became CRs (the segment
    separator), which text/plain, the viewer and FHIR's presentedForm show as one long line."""
    msg = Message(
        "MSH|^~\\&|RIS|ZZB|PACS|ZZX|20260105153000||ORU^R01^ORU_R01|R1|P|2.4\r"
        "OBX|1|FT|CT||\\H\\FINDINGS:\\N\\\\.br\\Spleen 11\\S\\cm."
        "\\X0D0A\\Normal.\\.sp2\\End||||||F\r"
    )
    text = msg.text(msg.need("OBX").field(5))
    assert text == "FINDINGS:\nSpleen 11^cm.\nNormal.\n\nEnd"  # no "_" for \\H\\ and \\N\\


@pytest.mark.parametrize("pid3", ["A100001^^^^MR", "A100001", "A100001^^^^PI~9990000018^^^^NH"])
def test_an_identifier_without_cx4_from_a_trust_feed_is_that_trusts(
    demo: Archive, pid3: str
) -> None:
    """Many PAS leave their own assigning authority out of PID-3. Before: AE ("carries no
    identifier assigned by the sending trust"), so such a trust could not feed the PACS."""
    s = demo.services
    handler = Hl7Handler(s, gate=SenderGate(s.directory, s.audit))
    msg = _a08("NOCX4", "|DEMO^ALICE^NOCX||19580312|F").replace("A100001^^^ZZA^MR", pid3)
    assert "MSA|AA|NOCX4|record A100001/ZZA updated" in handler.handle(msg, LOCAL)
    record, _ = _record(demo)
    assert record["name"] == "DEMO^ALICE^NOCX"


def test_another_trusts_identifier_is_still_refused(demo: Archive) -> None:
    s = demo.services
    handler = Hl7Handler(s, gate=SenderGate(s.directory, s.audit))
    msg = _a08("OTHER", "|DEMO^BOB^X||19710101|M").replace("A100001^^^ZZA^MR", "B7730444^^^ZZB^MR")
    assert "MSA|AE|OTHER|" in handler.handle(msg, LOCAL)
    merge = (
        "MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250320093000||ADT^A40^ADT_A39|M-1|P|2.4\r"
        "EVN|A40|20250320093000\r"
        "PID|1||A100001||DEMO^ALICE||19580312|F\r"
        "MRG|B7730444^^^ZZB^MR\r"
    )
    assert "MSA|AE|M-1|" in handler.handle(merge, LOCAL)  # across trusts: refused as before


@pytest.mark.parametrize(
    ("pid32", "status"),
    [("NSTS01", "NSTS01"), ("01", "NSTS01"), ("AL~NSTS01", "NSTS01"), ("03", "NSTS03"), ("", None)],
)
def test_nhs_number_status_in_pid32_as_feeds_send_it(pid32: str, status: str | None) -> None:
    """A status sent bare ("01") or after another reliability code in PID-32's repetitions
    is the traced status; before, only a first repetition spelled NSTS01 counted, so such a
    feed's records never linked across trusts and each raised a not-verified work item."""
    msg = Message(_a08("S32", "|DEMO^ALICE||19580312|F" + "|" * 24 + pid32))
    assert demographics(msg, msg.need("PID")).nhs_status == status


def test_dates_that_name_no_day_are_not_stored(demo: Archive) -> None:
    """PID-29 99999999 was stored as the date of death (R42 retention runs from it), and an
    order's OBR-7 / ORC-7.4 of 99999999 or 00000000 went out in the worklist as the scheduled
    date (and a procedure code wider than order_context keeps was cut on SQLite, a failed
    write on PostgreSQL): now AE naming the field; a time of day past 23:59:59 is left out."""
    handler = Hl7Handler(demo.services)
    died = _a08("D1", "|DEMO^ALICE||19580312|F" + "|" * 21 + "99999999|Y")
    assert "MSA|AE|D1|PID-29 date of death" in handler.handle(died)
    found = demo.identity.resolve("ZZA", "A100001")
    assert found is not None
    record = demo.identity.record(found.patient_pk)
    assert record is not None and (record["contact"] or {}).get("death_date") is None

    def order(control: str, start: str) -> str:
        return (
            f"MSH|^~\\&|RIS|ZZA|PACS|ZZX|20261205090000||ORM^O01^ORM_O01|{control}|P|2.4\r"
            "PID|1||A100001^^^ZZA^MR||DEMO^ALICE||19580312|F\r"
            f"ORC|NW|EPR-{control}|{control}||SC||^^^{start}^^S||20261205090000\r"
            f"OBR|1|EPR-{control}|{control}|CTCHE^CT Chest|||{start}|||||||||||"
            f"{control}|RP{control}|SPS{control}||||CT\r"
        )

    long_code = order("ACCD5", "20261205").replace("CTCHE^CT Chest", "X" * 65 + "^CT Chest")
    assert "MSA|AE|ACCD5|procedure code OBR-4.1" in handler.handle(long_code)
    # A known patient's order: PID-5 goes into the order only (not through the record).
    long_name = order("ACCD6", "20261205").replace("DEMO^ALICE", "N" * 330 + "^ALICE")
    assert "MSA|AE|ACCD6|patient name PID-5" in handler.handle(long_name)
    for control, start in (("ACCD1", "99999999"), ("ACCD2", "00000000"), ("ACCD3", "20261399")):
        ack = handler.handle(order(control, start))
        assert f"MSA|AE|{control}|order without a scheduled start" in ack, ack
    assert "MSA|AA|ACCD4|" in handler.handle(order("ACCD4", "20261205996000"))
    with demo.index.read() as conn:
        rows = conn.execute(
            select(orders.c.accession_number, orders.c.scheduled_start_date)
            .add_columns(orders.c.scheduled_start_time)
            .where(orders.c.accession_number.like("ACCD%"))
        ).all()
    assert [tuple(r) for r in rows] == [("ACCD4", "20261205", None)]


def test_a_value_postgresql_cannot_hold_is_ae_not_an_unanswered_connection(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    """A value no adapter check bounded (here an order's patient name past the column) failed
    the write on PostgreSQL with DataError, which left the inbox: the MLLP connection closed
    with no ACK and the message stayed 'received' for ever. Now AE with the database's words,
    the message kept as rejected, nothing of it applied."""
    pg = build_archive(
        load_settings(environ={"SOLENT_DATABASE_URL": fresh_postgres_url}, data_dir=tmp_path)
    )
    try:
        pg.index.add_trust("ZZA", "Trust ZZA")
        env = Envelope("RIS^ZZA", "PG1", "ORM^O01", "MSH|...", None, "ZZA")
        order = {
            "accession_number": "PG1",
            "accession_issuer": "ZZA",
            "patient_issuer": "ZZA",
            "patient_id": "P1",
            "patient_name": "N" * 400,
            "study_instance_uid": "1.2.3",
            "modality": "CT",
            "scheduled_start_date": "20261205",
        }
        ris = Principal(PrincipalKind.SYSTEM, "RIS^ZZA", "ZZA")
        context = {"accession_number": "PG1", "accession_issuer": "ZZA"}
        outcome = pg.services.inbox.process(
            env,
            lambda pk: Change(ris, pk),
            lambda tx: tx.place_order(order, context),
        )
        assert outcome.code == "AE"
        assert "does not fit: value too long" in outcome.detail
        with pg.index.read() as conn:
            assert conn.execute(select(orders.c.accession_number)).all() == []
            (status,) = conn.execute(select(hl7_message.c.status)).one()
        assert status == "rejected"
    finally:
        pg.close()
