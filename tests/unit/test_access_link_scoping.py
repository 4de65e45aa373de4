"""An explicit link between two records must widen visibility by exactly that record.

Regression: the link EXISTS once lost its correlation to the candidate record, so a single
A24 link anywhere made every patient of every trust visible to every caller.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select

from solent.app import Archive
from solent.domain.attributes import Level
from solent.domain.matching import parse_query
from solent.domain.principal import Principal, PrincipalKind
from solent.index import identity
from solent.index import schema as t
from solent.index.bulk import fill_synthetic
from solent.protocols.hl7.handler import Hl7Handler
from solent.services.identity import IdentityService
from solent.services.trust_view import OTHER_IDS


def _issuers(archive: Archive, principal: Principal) -> Counter[str]:
    query = parse_query(Level.STUDY, {"StudyInstanceUID": None}, ignore_unknown=True)
    result = archive.query.find(principal, query, limit=None, max_results=1000)
    # The issuer of the record each study is filed under: a linked study is shown under the
    # caller's own record (services/trust_view), its own IDs under OTHER_IDS.
    return Counter(
        (row.get(OTHER_IDS) or [(None, row["IssuerOfPatientID"])])[0][1] for row in result.rows
    )


def test_one_link_reveals_one_record_not_the_region(archive: Archive) -> None:
    for code in ("ZZC", "ZZD"):
        archive.index.add_trust(code, f"Trust {code}")
    fill_synthetic(archive.index, 40, studies_per_patient=1, series_per_study=1, seed=1)
    node = Principal(PrincipalKind.NODE, "SCANNER", "ZZA", frozenset({"query"}))
    assert _issuers(archive, node) == Counter({"ZZA": 10})

    with archive.index.read() as conn:
        rows = conn.execute(select(t.patient.c.pk, t.patient.c.issuer)).all()
    zza = next(r.pk for r in rows if r.issuer == "ZZA")
    zzb = next(r.pk for r in rows if r.issuer == "ZZB")
    archive.index.write(lambda c: identity.set_link(c, zza, zzb, "linked", "test", "test"))

    assert _issuers(archive, node) == Counter({"ZZA": 10, "ZZB": 1})

    archive.index.write(lambda c: identity.set_link(c, zza, zzb, "unlinked", "test", "test"))
    assert _issuers(archive, node) == Counter({"ZZA": 10})


def _hl7(facility: str, control: str, body: str, app: str = "PAS") -> str:
    msh = f"MSH|^~\\&|{app}|{facility}|PACS|ZZX|20250314120000||{{}}|{control}|P|2.4\r"
    head, _, rest = body.partition("\r")
    return msh.format(head) + rest


PERSON = "CARTER^JAMES^PAUL||19620417|M||||||||||||||||||||||||NSTS01"


def test_an_order_does_not_reopen_a_record_an_unlink_separated(archive: Archive) -> None:
    """§2.4 then §2.5: the EMPI unlinks ZZA's A123456 from ZZB's B7654321 (not one person,
    though the PAS gave both the same traced NHS number); ZZB's RIS then orders for B7654321.
    The order anchors ZZB's own record, never the ZZA record the unlink separated from it."""
    archive.index.add_trust("ZZC", "Trust ZZC")
    handler = Hl7Handler(archive.services, link_senders=("ZZX",))
    sent = [
        _hl7("ZZA", "A1", f"ADT^A28\rPID|1||A123456^^^ZZA^MR~9990000026^^^NHS^NH||{PERSON}\r"),
        _hl7("ZZB", "B1", f"ADT^A28\rPID|1||B7654321^^^ZZB^MR~9990000026^^^NHS^NH||{PERSON}\r"),
        _hl7(
            "ZZX",
            "X1",
            "ADT^A37^ADT_A37\rPID|1||A123456^^^ZZA^MR\rPID|2||B7654321^^^ZZB^MR\r",
            app="EMPI",
        ),
    ]
    assert [_msa(handler.handle(m)) for m in sent] == ["AA", "AA", "AA"]
    ident = IdentityService(archive.index)
    zza, zzb = ident.resolve("ZZA", "A123456"), ident.resolve("ZZB", "B7654321")
    assert zza is not None and zzb is not None
    ris = Principal(PrincipalKind.NODE, "ZZBCT", "ZZB", frozenset({"query"}))
    both = {zza.patient_pk, zzb.patient_pk}
    assert archive.services.access.visible_among(ris, both) == {zzb.patient_pk}

    order = _hl7(
        "ZZB",
        "O1",
        f"ORM^O01^ORM_O01\rPID|1||B7654321^^^ZZB^MR~9990000026^^^NHS^NH||{PERSON}\r"
        "ORC|NW|P1^EPR_B|ZZB25000123^RIS_B||SC\r"
        "OBR|1|P1^EPR_B|ZZB25000123^RIS_B|CCHAPC^CT^NICIP|||20250314113500"
        "|||||||||||ZZB25000123|RP1|SPS1||||CT\r",
        app="RIS",
    )
    assert _msa(handler.handle(order)) == "AA"
    assert archive.services.access.visible_among(ris, both) == {zzb.patient_pk}
    # An order still opens a record of the same person at another trust (no unlink there).
    third = _hl7("ZZC", "C1", f"ADT^A28\rPID|1||C1^^^ZZC^MR~9990000026^^^NHS^NH||{PERSON}\r")
    assert _msa(handler.handle(third)) == "AA"
    zzc = ident.resolve("ZZC", "C1")
    assert zzc is not None
    assert zzc.patient_pk in archive.services.access.visible_among(ris, {zzc.patient_pk})


def _msa(ack: str) -> str:
    return next(s for s in ack.split("\r") if s.startswith("MSA|")).split("|")[1]
