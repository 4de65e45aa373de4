"""A trust's feed may carry a site code in MSH-4 (ITK: the 3-character ODS code of the trust,
or the 5-character code of a site within it). Registered for its trust
(`solent hl7 sender add PAS ZZA01 --trust ZZA`), it speaks for that trust: before, every
message was refused AR ("ZZA01 is not a registered trust") despite the registration."""

from __future__ import annotations

from solent.app import Archive
from solent.domain.principal import SYSTEM
from solent.index.hl7_senders import add_sender
from solent.protocols.hl7.handler import Hl7Handler
from solent.protocols.hl7.senders import SenderGate
from tests.unit.security_fixtures import demo, demo_template

__all__ = ["demo", "demo_template"]

LOCAL = "127.0.0.1:40000"


def _handler(archive: Archive) -> Hl7Handler:
    s = archive.services
    return Hl7Handler(s, gate=SenderGate(s.directory, s.audit))


def _msa(ack: str) -> list[str]:
    return next(seg for seg in ack.split("\r") if seg.startswith("MSA|")).split("|")[1:4]


def test_a_site_registered_for_its_trust_updates_and_orders_for_that_trust(
    demo: Archive,
) -> None:
    add_sender(demo.index, "PAS", "ZZA01", ("127.0.0.1",), "ZZA")
    handler = _handler(demo)
    a08 = (
        "MSH|^~\\&|PAS|ZZA01|PACS|ZZX|20250320093000||ADT^A08^ADT_A01|S-1|P|2.4\r"
        "EVN|A08|20250320093000\r"
        "PID|1||A100001^^^ZZA^MR||DEMO^ALICE^SITE||19580312|F\r"
    )
    assert _msa(handler.handle(a08, LOCAL))[:2] == ["AA", "S-1"]
    records = demo.services.records
    pk = records.person(SYSTEM, issuer="ZZA", local_id="A100001").named_pk
    assert pk is not None
    assert records.patient_record(SYSTEM, pk)["record"]["name"] == "DEMO^ALICE^SITE"
    orm = (
        "MSH|^~\\&|PAS|ZZA01|PACS|ZZX|20250320093000||ORM^O01^ORM_O01|S-2|P|2.4\r"
        "PID|1||A100001^^^ZZA^MR||DEMO^ALICE||19580312|F\r"
        "ORC|NW|P1|ZZA0001||SC||^^^20250314113500^^S\r"
        "OBR|1|P1|ZZA0001|XR^Chest XR|||20250314113500|||||||||||ZZA0001|RP1|SPS1||||CR\r"
    )
    code, control, text = _msa(handler.handle(orm, LOCAL))
    assert (code, control) == ("AA", "S-2")
    assert "ZZA0001/ZZA" in text  # the accession is the trust's, not the site's


def test_a_site_still_speaks_for_its_own_trust_only(demo: Archive) -> None:
    add_sender(demo.index, "PAS", "ZZA01", ("127.0.0.1",), "ZZA")
    bob = (
        "MSH|^~\\&|PAS|ZZA01|PACS|ZZX|20250320093000||ADT^A08^ADT_A01|S-3|P|2.4\r"
        "EVN|A08|20250320093000\r"
        "PID|1||B7730444^^^ZZB^MR||DEMO^BOB^CHANGED||19710101|M\r"
    )
    code, _, text = _msa(_handler(demo).handle(bob, LOCAL))
    assert code == "AE" and "only update its own records" in text
    unregistered = bob.replace("ZZA01", "ZZA02").replace("ZZB^MR", "ZZA^MR")
    assert _msa(_handler(demo).handle(unregistered, LOCAL))[0] == "AR"
