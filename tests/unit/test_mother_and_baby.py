"""R58: a baby's PAS record naming its mother in PID-21 is a relationship, never a link or a
merge. A baby registered under its mother's NHS number (a classic PAS slip) must not be joined
to her by the NHS-number link (R12), an A24 or an A40 asking to join them is refused, and the
relationship is shown on both records; neither's studies ever appear under the other."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from solent.app import Archive
from solent.domain import nhs_number
from solent.domain.principal import SYSTEM
from solent.protocols.hl7.handler import Hl7Handler
from solent.protocols.hl7.senders import SenderGate
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template
from tests.unit.stow_support import ct_instance, stow_body

__all__ = ["demo", "demo_client", "demo_template"]

LOCAL = "127.0.0.1:40000"  # the demo feeds are registered from this machine
MOTHER = ("ZZA", "A9000001")
BABY = ("ZZB", "B9000002")
#: A valid number (modulus 11) of the test range, the mother's, which the baby's PAS reused.
SHARED = next(
    n
    for n in (f"999000{i:03d}{d}" for i in range(300, 400) for d in range(10))
    if nhs_number.is_valid(n)
)


def _adt(trigger: str, control: str, facility: str, pid: str) -> str:
    return (
        f"MSH|^~\\&|PAS|{facility}|PACS|ZZX|20250320093000||ADT^{trigger}^ADT_A01|{control}|P|2.4\r"
        f"EVN|{trigger}|20250320093000\r{pid}\rPV1|1|N\r"
    )


def _mother_a04() -> str:
    return _adt(
        "A04",
        "M-1",
        "ZZA",
        f"PID|1||{MOTHER[1]}^^^ZZA^MR~{SHARED}^^^NHS^NH||DEMO^MARY||19900101|F|||"
        "7 MILL LANE^^TOWN^^XX1 1XX^GBR^H|||||||||||||||||||||NSTS01",
    )


def _baby(trigger: str, control: str, *, mother: bool) -> str:
    """The baby at ZZB: same surname and address, no date of birth yet, and (the slip) the
    mother's NHS number, traced. PID-21 names the mother by her ZZA hospital number."""
    pid21 = f"{MOTHER[1]}^^^ZZA^MR" if mother else ""
    return _adt(
        trigger,
        control,
        "ZZB",
        f"PID|1||{BABY[1]}^^^ZZB^MR~{SHARED}^^^NHS^NH||DEMO^BABY GIRL|||F|||"
        f"7 MILL LANE^^TOWN^^XX1 1XX^GBR^H||||||||||{pid21}|||||||||||NSTS01",
    )


def _ack(reply: str) -> str:
    return reply.split("MSA|")[1].split("|")[0]


def _pk(archive: Archive, key: tuple[str, str]) -> int:
    found = archive.services.records.person(SYSTEM, issuer=key[0], local_id=key[1]).named_pk
    assert found is not None
    return found


def _linked(archive: Archive) -> bool:
    return _pk(archive, MOTHER) in archive.identity.linked_patient_pks(_pk(archive, BABY))


def _stow(client: TestClient, headers: dict[str, str], key: tuple[str, str]) -> str:
    study = generate_uid()
    body, content_type = stow_body(ct_instance(key[1], key[0], study, nhs=SHARED))
    r = client.post("/dicomweb/studies", content=body, headers={**headers, **content_type})
    assert r.status_code == 200, r.text
    return study


def _person(client: TestClient, headers: dict[str, str], key: tuple[str, str]) -> Any:
    r = client.get(f"/api/identity/person?issuer={key[0]}&patient_id={key[1]}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_pid21_keeps_mother_and_baby_apart_whatever_they_share(
    demo: Archive, demo_client: TestClient
) -> None:
    s = demo.services
    handler = Hl7Handler(s, gate=SenderGate(s.directory, s.audit))
    assert _ack(handler.handle(_mother_a04(), LOCAL)) == "AA"

    # Without PID-21 the slip is invisible to the archive: one traced number, no date of
    # birth to disagree on, two trusts, so the NHS-number rule links them.
    assert _ack(handler.handle(_baby("A04", "B-1", mother=False), LOCAL)) == "AA"
    assert _linked(demo)

    # The baby's PAS sends PID-21: the relationship is recorded and the link undone, for good.
    reply = handler.handle(_baby("A08", "B-2", mother=True), LOCAL)
    assert _ack(reply) == "AA", reply
    assert not _linked(demo)
    assert _ack(handler.handle(_baby("A08", "B-3", mother=True), LOCAL)) == "AA"  # a repeat
    assert not _linked(demo)
    items = [i for i in demo.identity.work_queue() if i["kind"] == "mother-baby-nhs-number"]
    assert len(items) == 1 and SHARED in items[0]["detail"]
    history = demo.identity.history(_pk(demo, BABY))
    assert [e["after"] for e in history if e["kind"] == "relationship"] == [
        {"mother": f"{MOTHER[1]}/{MOTHER[0]}"}
    ]
    audits = demo.audit.search(patient_issuer=BABY[0], patient_id=BABY[1], limit=100)
    assert [a for a in audits if '"change":"relationship"' in (a["detail"] or "")]

    # Neither an EMPI's A24 nor an A40 joins them: AE with the reason, nothing changes.
    a24 = (
        "MSH|^~\\&|EMPI|ZZX|PACS|ZZX|20250320093000||ADT^A24^ADT_A24|L-1|P|2.4\r"
        "EVN|A24|20250320093000\r"
        f"PID|1||{MOTHER[1]}^^^ZZA^MR\rPID|2||{BABY[1]}^^^ZZB^MR\r"
    )
    refused = handler.handle(a24, LOCAL)
    assert _ack(refused) == "AE" and "mother and baby" in refused, refused
    assert not _linked(demo)
    # Shown on both records; neither's studies appear under the other.
    zza = add_user(demo, "drza", "ZZA", "clinician")
    zzb = add_user(demo, "drzb", "ZZB", "clinician")
    mother_study = _stow(demo_client, zza, MOTHER)
    baby_study = _stow(demo_client, zzb, BABY)
    baby_view = _person(demo_client, zzb, BABY)
    assert [s["study_uid"] for s in baby_view["studies"]] == [baby_study]
    (baby_record,) = [r for r in baby_view["records"] if r["local_id"] == BABY[1]]
    assert {"relationship": "mother", "issuer": "ZZA", "patient_id": MOTHER[1]} in baby_record[
        "related"
    ]
    mother_view = _person(demo_client, zza, MOTHER)
    assert [s["study_uid"] for s in mother_view["studies"]] == [mother_study]
    assert all(r["local_id"] != BABY[1] for r in mother_view["records"])
    # A ZZA clinician finds nothing of the baby by the shared NHS number's link either.
    r = demo_client.get(f"/api/studies?issuer=ZZB&patient_id={BABY[1]}", headers=zza)
    assert baby_study not in r.text


def test_a40_merging_a_baby_into_its_mother_is_refused(demo: Archive) -> None:
    """Within one trust: PID-21 without an assigning authority names the sender's record."""
    s = demo.services
    handler = Hl7Handler(s, gate=SenderGate(s.directory, s.audit))
    mum = _adt("A04", "P-1", "ZZB", "PID|1||B9100001^^^ZZB^MR||DEMO^JANE||19880505|F")
    baby = _adt(
        "A04",
        "P-2",
        "ZZB",
        "PID|1||B9100002^^^ZZB^MR||DEMO^BABY BOY||20250319|M" + "|" * 13 + "B9100001",
    )
    assert _ack(handler.handle(mum, LOCAL)) == "AA"
    assert _ack(handler.handle(baby, LOCAL)) == "AA"
    a40 = (
        "MSH|^~\\&|PAS|ZZB|PACS|ZZX|20250320093000||ADT^A40^ADT_A39|G-1|P|2.4\r"
        "EVN|A40|20250320093000\r"
        "PID|1||B9100001^^^ZZB^MR||DEMO^JANE\rMRG|B9100002^^^ZZB^MR\r"
    )
    merged = handler.handle(a40, LOCAL)
    assert _ack(merged) == "AE" and "mother and baby" in merged, merged
    assert _pk(demo, ("ZZB", "B9100002")) != _pk(demo, ("ZZB", "B9100001"))
    record = demo.identity.record(_pk(demo, ("ZZB", "B9100001")))
    assert record is not None
    assert record["related"] == [
        {"relationship": "child", "issuer": "ZZB", "patient_id": "B9100002"}
    ]
