"""Rules-based prefetch of priors across all issuers (R47) and procedure coding (R19).

An order at one trust warms the patient's relevant priors from every trust whose record is
linked to theirs, through the change-feed consumer, exactly where the viewer will look for them;
never a study of another patient, nor of a record an A37 unlinked. Relevance follows the mapped
procedure code and body region, modality, the age of the prior and the maximum count."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset

from solent.app import Archive, build_archive
from solent.domain.principal import SYSTEM, Channel, Principal, PrincipalKind, Provenance
from solent.domain.prior_relevance import Procedure, Rules, hanging_order, relevant_priors
from solent.domain.procedures import parse_map
from solent.errors import InvalidInput
from solent.index.jobs import FeedEvent
from solent.jobs.queue import InProcessQueue
from solent.jobs.tasks import CONSUMERS, consumers_named
from solent.protocols.hl7.handler import Hl7Handler
from solent.protocols.hl7.senders import SenderGate
from solent.protocols.http import create_app
from solent.settings import load_settings
from tests.contract.synthetic import write_instance
from tests.unit.security_fixtures import add_user, cli_env, demo_template

__all__ = ["demo_template"]

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "procedure-map.example.csv"
LOCAL = "127.0.0.1:40000"  # the demo's HL7 feeds are registered from this machine
TODAY = date(2026, 12, 5)


@pytest.fixture
def archive(demo_template: Path, tmp_path: Path) -> Iterator[Archive]:
    """The demo data with the example mapping table; the viewer's base is the test client's."""
    data = tmp_path / "demo-var"
    shutil.copytree(demo_template, data)
    settings = load_settings(
        environ={},
        data_dir=data,
        procedure_map=str(EXAMPLE),
        prefetch_dicomweb_base="http://testserver/dicomweb",
    )
    archive = build_archive(settings)
    archive.prefetch.today = lambda: TODAY
    yield archive
    archive.close()


def _queue(archive: Archive) -> InProcessQueue:
    """The prefetch and coding consumers, run in-process (as `solent serve` runs them);
    started at the feed's head like a consumer added to a running archive."""
    queue = InProcessQueue(
        archive.index,
        archive.store,
        consumers=consumers_named("procedures,prefetch", {"procedures": 0, "prefetch": 0}),
        prefetch=archive.prefetch,
        max_attempts=1,  # a failing job shows at once, not after its retries
    )
    queue.dispatch()
    return queue


def _hl7(archive: Archive, message: str) -> str:
    s = archive.services
    return Hl7Handler(s, gate=SenderGate(s.directory, s.audit)).handle(message, LOCAL)


def _order(control: str, pid: str, code: str, modality: str, accession: str) -> str:
    """ORM^O01 from ZZA's RIS (the layout of scenario 2.5), ORC-1=NW."""
    return (
        f"MSH|^~\\&|RIS|ZZA|PACS|ZZX|20261205090000||ORM^O01^ORM_O01|{control}|P|2.4\r"
        f"{pid}\r"
        f"ORC|NW|EPR-{accession}|{accession}||SC||^^^20261205100000^^S||20261205090000\r"
        f"OBR|1|EPR-{accession}|{accession}|{code}|||20261205100000|||||||||||"
        f"{accession}|RP{accession}|SPS{accession}||||{modality}\r"
    )


ALICE_ZZA = "PID|1||A100001^^^ZZA^MR||DEMO^ALICE||19580312|F"


def _study(archive: Archive, issuer: str, local_id: str) -> str:
    rows = archive.query.list_studies(SYSTEM, issuer=issuer, local_id=local_id)
    assert len(rows) >= 1
    return str(rows[0]["study_uid"])


def _warm(client: TestClient, archive: Archive, headers: dict[str, str], study: str) -> bool:
    """Whether what the viewer fetches first of ``study`` (its thumbnail and its series
    metadata, as this user's browser asks) was already in the cache: no miss."""
    responses = archive.services.retrieve.responses
    before = responses.misses
    base = f"/dicomweb/studies/{study}"
    r = client.get(f"{base}/thumbnail", headers={**headers, "Accept": "image/*"})
    assert r.status_code == 200, r.text
    series = client.get(f"{base}/series", headers={**headers, "Accept": "application/dicom+json"})
    for row in series.json():
        uid = row["0020000E"]["Value"][0]
        m = client.get(
            f"{base}/series/{uid}/metadata",
            headers={**headers, "Accept": "application/dicom+json"},
        )
        assert m.status_code == 200, m.text
    return responses.misses == before


# -- R19: the mapping table --------------------------------------------------------------------


def test_the_mapping_table_maps_each_trusts_codes_and_refuses_a_bad_row() -> None:
    table = parse_map(EXAMPLE.read_text(), "example")
    # ZZB's local catalogue code and the NICIP code sent as such name the same procedure.
    local = table.lookup("ZZB", "LOCAL", "CTCAP")
    nicip = table.lookup("ZZA", "NICIP", "CCHAPC")
    assert local is not None and nicip is not None and local.key == nicip.key == "NICIP:CCHAPC"
    assert local.regions == frozenset({"CHEST", "ABDOMEN", "PELVIS"})
    # A trust's own row is that trust's: ZZC sending ZZB's local code maps to nothing.
    assert table.lookup("ZZC", "LOCAL", "CTCAP") is None
    # The description fallback ignores case and spacing; a NICIP code without a row is kept.
    mr = table.by_description("ZZB", "  mr   Brain ")
    assert mr is not None and (mr.nicip, mr.regions) == ("MBRAI", frozenset({"HEAD"}))
    kept = table.lookup("ZZD", "NICIP", "XKNEB")
    assert kept is not None and (kept.key, kept.source) == ("NICIP:XKNEB", "as-received")
    assert table.lookup("ZZD", "LOCAL", "XKNEB") is None

    header = "issuer,coding_system,code,nicip,snomed,body_region\n"
    for row, says in (
        ("ZZA,LOCAL,X1,,,CHEST", "neither a NICIP nor a SNOMED CT"),
        ("ZZA,LOCAL,X1,CCHEC,12ab,CHEST", "SNOMED CT id"),
        ("ZZA,LOCAL,X1,CCHEC,,chest wall!", "body region"),
        ("ZZA,LOCAL,X1,CCHEC,,\nZZA,local,x1,CABPE,,", "mapped twice"),
    ):
        with pytest.raises(InvalidInput, match=says) as err:
            parse_map(header + row + "\n", "map.csv")
        assert "map.csv line " in str(err.value)


def test_an_order_and_a_study_record_the_code_as_received_and_as_mapped(
    archive: Archive,
) -> None:
    ack = _hl7(archive, _order("C-1", ALICE_ZZA, "MR-HEAD^MR head^RIS_A", "MR", "ZZA26000001"))
    assert "MSA|AA|C-1|" in ack, ack
    drza = add_user(archive, "drza", "ZZA", "clinician")
    with TestClient(create_app(archive), raise_server_exceptions=False) as client:
        r = client.get(
            "/api/identity/person", params={"issuer": "ZZA", "patient_id": "A100001"}, headers=drza
        )
    assert r.status_code == 200, r.text
    order = next(o for o in r.json()["orders"] if o["accession_number"] == "ZZA26000001")
    assert (order["procedure_code"], order["procedure_coding_system"]) == ("MR-HEAD", "RIS_A")
    assert (order["nicip_code"], order["snomed_code"], order["body_region"]) == (
        "MBRAI",
        None,
        "HEAD",
    )
    # A study without a code is coded from its description (ZZB's MR BRAIN).
    coded = archive.prefetch.coding.code_study(_study(archive, "ZZB", "B7730021"))
    assert coded is not None
    assert (coded["source"], coded["meaning"], coded["nicip_code"]) == (
        "description",
        "MR BRAIN",
        "MBRAI",
    )


def test_a_study_is_coded_from_its_dicom_requested_procedure_code(
    archive: Archive, tmp_path: Path
) -> None:
    """ZZB's modality sends its RIS's local code in Requested Procedure Code Sequence: the
    study records it as received and as the consortium's NICIP code, not its description."""
    written = write_instance(tmp_path / "ct.dcm", patient_id="B9990001")
    ds = pydicom.dcmread(written.path)
    ds.IssuerOfPatientID = "ZZB"
    ds.StudyDescription = "MR BRAIN"  # a description the table maps otherwise: the code wins
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "CTCAP", "LOCAL", "CT CAP"
    ds.RequestedProcedureCodeSequence = [code]
    ds.save_as(written.path)
    who = Principal(PrincipalKind.IMPORTER, "test", "ZZB")
    assert archive.ingestor.ingest_file(written.path, who, Provenance(Channel.IMPORT)).ok
    coded = archive.prefetch.coding.code_study(written.study_uid)
    assert coded is not None
    assert (coded["source"], coded["code"], coded["coding_system"]) == (
        "requested",
        "CTCAP",
        "LOCAL",
    )
    assert (coded["nicip_code"], coded["body_region"]) == ("CCHAPC", "CHEST;ABDOMEN;PELVIS")


def test_feed_events_become_one_job_per_trigger() -> None:
    """A 3-instance study arriving is one prefetch and one coding job; an order and an
    admission are theirs; other events are nothing to prefetch for."""
    consumers = {c.name: c for c in CONSUMERS}
    events = [
        FeedEvent(1, "instance.stored", "1.2.3", "1.2.3.1", "1.2.3.1.1"),
        FeedEvent(2, "instance.stored", "1.2.3", "1.2.3.1", "1.2.3.1.2"),
        FeedEvent(3, "order.placed", "1.2.9", None, None, "ZZA"),
        FeedEvent(4, "patient.admitted", None, None, None, "ZZA", 42),
        FeedEvent(5, "instance.stored", "1.2.3", "1.2.3.1", "1.2.3.1.3"),
        FeedEvent(6, "patient.unlinked", None, None, None, "ZZA", 42),
    ]
    assert consumers["prefetch"].batch_jobs(events) == [
        ("prefetch_priors", {"trigger": "order", "study_uid": "1.2.9"}),
        ("prefetch_priors", {"trigger": "admission", "patient_pk": 42}),
        ("prefetch_priors", {"trigger": "study", "study_uid": "1.2.3"}),
    ]
    assert consumers["procedures"].batch_jobs(events) == [
        ("code_study", {"study_uid": "1.2.9"}),
        ("code_study", {"study_uid": "1.2.3"}),
    ]


# -- R47: relevance rules ----------------------------------------------------------------------


def _p(uid: str, when: str, modality: str, code: str | None, *regions: str) -> Procedure:
    return Procedure(uid, when, frozenset({modality}), code, frozenset(regions))


def test_relevance_ranks_code_then_region_then_modality_within_age_and_count() -> None:
    current = _p("now", "20261205", "CT", "NICIP:CCHAPC", "CHEST", "ABDOMEN", "PELVIS")
    priors = [
        _p("same-code-old", "20220101", "CT", "NICIP:CCHAPC", "CHEST", "ABDOMEN", "PELVIS"),
        _p("chest-xr", "20250302", "CR", "NICIP:XCHES", "CHEST"),
        _p("head-ct", "20261101", "CT", "NICIP:CHEAD", "HEAD"),  # a CT, another region
        _p("unmapped-ct", "20260901", "CT", None),  # region unknown: same modality counts
        _p("too-old", "20100101", "CT", "NICIP:CCHAPC", "CHEST"),
        _p("undated", "", "CT", "NICIP:CCHAPC", "CHEST"),
        _p("now", "20261205", "CT", "NICIP:CCHAPC", "CHEST"),  # the current study itself
    ]
    chosen = relevant_priors(current, priors, Rules(), TODAY)
    assert [(p.study_uid, why) for p, why in chosen] == [
        ("same-code-old", "code"),
        ("chest-xr", "region"),
        ("unmapped-ct", "modality"),
    ]
    two = relevant_priors(current, priors, Rules(max_priors=2), TODAY)
    assert [p.study_uid for p, _ in two] == ["same-code-old", "chest-xr"]
    young = relevant_priors(current, priors, Rules(max_age_days=700), TODAY)
    assert [p.study_uid for p, _ in young] == ["chest-xr", "unmapped-ct"]
    code_only = relevant_priors(current, priors, Rules(criteria=("code",)), TODAY)
    assert [p.study_uid for p, _ in code_only] == ["same-code-old"]
    # An admission names no procedure: the newest priors within the age.
    admitted = relevant_priors(None, priors, Rules(max_priors=2), TODAY)
    assert [p.study_uid for p, _ in admitted] == ["now", "head-ct"]
    with pytest.raises(ValueError, match="unknown prior relevance"):
        Rules.parse_criteria("code,bodypart")


def test_the_reading_screen_hangs_the_same_procedure_first_whatever_its_age() -> None:
    """R19 for hanging: every prior is listed (none left out by age or count), the relevant ones
    first by how they match, then the rest newest first; the study itself is not its prior."""
    current = _p("now", "20261205", "CT", "NICIP:CCHAPC", "CHEST", "ABDOMEN", "PELVIS")
    priors = [
        _p("head-ct", "20261101", "CT", "NICIP:CHEAD", "HEAD"),
        _p("chest-xr", "20250302", "CR", "NICIP:XCHES", "CHEST"),
        _p("too-old", "20100101", "CT", "NICIP:CCHAPC", "CHEST"),
        _p("mr-knee", "20240101", "MR", None),
        _p("undated", "", "US", None, "NECK"),
        _p("now", "20261205", "CT", "NICIP:CCHAPC", "CHEST"),
    ]
    assert [(p.study_uid, why) for p, why in hanging_order(current, priors)] == [
        ("too-old", "code"),
        ("chest-xr", "region"),
        ("head-ct", None),
        ("mr-knee", None),
        ("undated", None),
    ]


# -- R47: the order trigger, end to end --------------------------------------------------------


def test_an_order_at_zza_warms_the_linked_zzb_prior_and_no_other_patients_study(
    archive: Archive,
) -> None:
    queue = _queue(archive)
    drza = add_user(archive, "drza", "ZZA", "clinician")
    drzb = add_user(archive, "drzb", "ZZB", "clinician")
    alice_zzb = _study(archive, "ZZB", "B7730021")  # MR BRAIN, linked by verified NHS number
    bob_zzb = _study(archive, "ZZB", "B7730444")  # CT ABDOMEN PELVIS of another patient
    alice_ct = next(
        r["study_uid"]
        for r in archive.query.list_studies(SYSTEM, issuer="ZZA", local_id="A100001")
        if "CT" in r["modalities"]
    )
    with TestClient(create_app(archive), raise_server_exceptions=False) as client:
        # An MR head ordered at ZZA: the ZZB MR brain is the relevant prior.
        ack = _hl7(archive, _order("C-2", ALICE_ZZA, "MR-HEAD^MR head^RIS_A", "MR", "ZZA26000002"))
        assert "MSA|AA|C-2|" in ack, ack
        assert queue.dispatch() >= 1
        assert _warm(client, archive, drza, alice_zzb)  # hot before anyone opened it
        assert not _warm(client, archive, drzb, bob_zzb)  # another patient: not read
        assert not _warm(client, archive, drza, alice_ct)  # a chest CT: not relevant to a head

        # The reads were the system's, for the order, and name the ZZB record they read.
        trail = archive.audit.search(patient_issuer="ZZB", patient_id="B7730021")
        system = [x for x in trail if x["actor_name"] == "prefetch"]
        assert system and {x["purpose"] for x in system} == {"prefetch:order"}
        assert all("prior prefetch" in (x["detail"] or "") for x in system)
        summary = archive.audit.search(patient_issuer="ZZA", patient_id="A100001")
        assert any(
            alice_zzb in (x["detail"] or "") and x["actor_name"] == "prefetch" for x in summary
        )
        assert not any(
            x["actor_name"] == "prefetch"
            for x in archive.audit.search(patient_issuer="ZZB", patient_id="B7730444")
        )


def test_after_an_a37_unlink_an_order_no_longer_warms_the_other_trusts_study(
    archive: Archive,
) -> None:
    queue = _queue(archive)
    drza = add_user(archive, "drza", "ZZA", "clinician")
    drzb = add_user(archive, "drzb", "ZZB", "clinician")
    alice_zzb = _study(archive, "ZZB", "B7730021")
    unlink = (
        "MSH|^~\\&|EMPI|ZZX|PACS|ZZX|20261205080000||ADT^A37^ADT_A37|U-1|P|2.4\r"
        "EVN|A37|20261205080000\r"
        "PID|1||A100001^^^ZZA^MR||DEMO^ALICE||19580312|F\r"
        "PID|2||B7730021^^^ZZB^MR||DEMO^ALICE||19580312|F\r"
    )
    assert "MSA|AA|U-1|" in _hl7(archive, unlink)
    with TestClient(create_app(archive), raise_server_exceptions=False) as client:
        ack = _hl7(archive, _order("C-3", ALICE_ZZA, "MR-HEAD^MR head^RIS_A", "MR", "ZZA26000003"))
        assert "MSA|AA|C-3|" in ack, ack
        queue.dispatch()
        assert not _warm(client, archive, drzb, alice_zzb)
        assert (
            client.get(f"/dicomweb/studies/{alice_zzb}/thumbnail", headers=drza).status_code == 404
        )


def test_an_order_never_warms_another_patients_study_that_the_rules_would_choose(
    archive: Archive,
) -> None:
    """A CT chest/abdomen/pelvis (NICIP CCHAPC, as sent in scenario 2.5): Alice's two chest
    studies are relevant by region, and so would be Bob's newer CT abdomen/pelvis at ZZB, were
    it hers: it must stay cold, and her MR brain (another region) too."""
    archive.prefetch.rules = Rules(max_priors=2)
    queue = _queue(archive)
    drza = add_user(archive, "drza", "ZZA", "clinician")
    drzb = add_user(archive, "drzb", "ZZB", "clinician")
    rows = archive.query.list_studies(SYSTEM, issuer="ZZA", local_id="A100001")
    by_modality = {r["modalities"]: r["study_uid"] for r in rows}
    with TestClient(create_app(archive), raise_server_exceptions=False) as client:
        order = _order(
            "C-4", ALICE_ZZA, "CCHAPC^CT chest abdomen pelvis with contrast^NICIP", "CT", "ZZA4"
        )
        assert "MSA|AA|C-4|" in _hl7(archive, order)
        queue.dispatch()
        assert _warm(client, archive, drza, by_modality["CR"])
        assert _warm(client, archive, drza, by_modality["CT"])
        assert not _warm(client, archive, drzb, _study(archive, "ZZB", "B7730444"))
        assert not _warm(client, archive, drza, _study(archive, "ZZB", "B7730021"))


def test_an_admission_warms_the_newest_prior_from_any_linked_trust(archive: Archive) -> None:
    """ADT^A01 at ZZA names no procedure: the newest prior of the person, here ZZB's MR."""
    archive.prefetch.rules = Rules(max_priors=1)
    queue = _queue(archive)
    drza = add_user(archive, "drza", "ZZA", "clinician")
    admit = (
        "MSH|^~\\&|PAS|ZZA|PACS|ZZX|20261205070000||ADT^A01^ADT_A01|A-1|P|2.4\r"
        "EVN|A01|20261205070000\r"
        f"{ALICE_ZZA}\r"
        "PV1|1|I|WARD1\r"
    )
    assert "MSA|AA|A-1|" in _hl7(archive, admit)
    with TestClient(create_app(archive), raise_server_exceptions=False) as client:
        queue.dispatch()
        assert _warm(client, archive, drza, _study(archive, "ZZB", "B7730021"))
        ct = next(
            r["study_uid"]
            for r in archive.query.list_studies(SYSTEM, issuer="ZZA", local_id="A100001")
            if r["modalities"] == "CT"
        )
        assert not _warm(client, archive, drza, ct)  # beyond the maximum count


def test_a_study_arriving_prefetches_only_when_it_is_recent(archive: Archive) -> None:
    """ZZB's MR brain arriving: a study made the day before warms the person's relevant priors
    (here: none is of the head, and the MR at ZZB is the only MR); an old study arriving (an
    import, a migration) reads nothing."""
    mr = _study(archive, "ZZB", "B7730021")  # 2026-06-10
    prefetch = archive.prefetch
    prefetch.today = lambda: date(2026, 6, 11)
    assert prefetch.run("study", study_uid=mr).outcome == "nothing-relevant"
    prefetch.rules = Rules(criteria=("code", "region", "modality"), max_priors=3)
    ct = next(
        r["study_uid"]
        for r in archive.query.list_studies(SYSTEM, issuer="ZZA", local_id="A100001")
        if r["modalities"] == "CR"
    )
    prefetch.today = lambda: date(2025, 3, 3)  # the chest X-ray (2025-03-02) arrives
    arrived = prefetch.run("study", study_uid=ct)
    assert arrived.outcome == "warmed"
    assert [(t, why) for _, t, why in arrived.chosen] == [("ZZA", "region")]  # the chest CT
    prefetch.today = lambda: TODAY  # the same X-ray imported long after
    assert prefetch.run("study", study_uid=ct).outcome == "old-study"


def test_the_cli_checks_a_mapping_file_and_looks_codes_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from solent.cli import main

    cli_env(monkeypatch, tmp_path / "var")
    assert main(["procedures", "check", str(EXAMPLE)]) == 0
    assert "12 mapping(s), no errors" in capsys.readouterr().out
    bad = tmp_path / "map.csv"
    bad.write_text("issuer,coding_system,code,nicip,snomed,body_region\nZZA,LOCAL,X1,,,CHEST\n")
    assert main(["procedures", "check", str(bad)]) == 2
    assert "map.csv line 2: neither a NICIP nor a SNOMED CT" in capsys.readouterr().err
    monkeypatch.setenv("SOLENT_PROCEDURE_MAP", str(EXAMPLE))
    args = ["procedures", "lookup", "--issuer", "ZZB", "--system", "LOCAL", "--code", "CTCAP"]
    assert main(args) == 0
    assert '"nicip": "CCHAPC"' in capsys.readouterr().out
    assert main([*args[:-1], "NOPE"]) == 1
