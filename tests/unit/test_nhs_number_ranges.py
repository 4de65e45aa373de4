"""R2: a valid NHS number outside the issued ranges is a warning on the data-quality queue (kept,
linked when traced); on a production archive a test number (999 range) is queued and never links
records across trusts; the demo and test archives (production off) use test numbers freely."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from solent.app import Archive, build_archive
from solent.demo import ALICE
from solent.domain import nhs_number as nhs
from solent.domain.nhs_number import NumberRange
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.errors import ConfigurationError
from solent.index.hl7_senders import add_sender
from solent.protocols.hl7.handler import Hl7Handler
from solent.protocols.hl7.senders import SenderGate
from solent.settings import load_settings
from tests.interop.hl7_support import write_ct
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template

__all__ = ["demo", "demo_client", "demo_template"]

RANGE_KINDS = {nhs.OUTSIDE_ISSUED_KIND, nhs.TEST_NUMBER_KIND}
LOCAL = "127.0.0.1:40000"


def _n(nine: str) -> str:
    number = nhs.complete(nine)
    assert number is not None, nine
    return number


TEST_NUMBER = _n("999000002")  # 9990000026, the number of the NHS examples
OUTSIDE = _n("800000000")  # 8000000008: passes the check digit, never issued
ISSUED = _n("401023213")


# -- the classification --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nine", "expected"),
    [
        ("000000001", NumberRange.OUTSIDE_ISSUED),
        ("299999999", NumberRange.OUTSIDE_ISSUED),
        ("300000000", NumberRange.ISSUED),  # 3xx England (R2; confirm with NHS England)
        ("399999999", NumberRange.ISSUED),
        ("400000000", NumberRange.ISSUED),
        ("499999999", NumberRange.ISSUED),
        ("500000000", NumberRange.OUTSIDE_ISSUED),
        ("599999999", NumberRange.OUTSIDE_ISSUED),
        ("600000000", NumberRange.ISSUED),
        ("799999999", NumberRange.ISSUED),
        ("800000000", NumberRange.OUTSIDE_ISSUED),
        ("943476591", NumberRange.OUTSIDE_ISSUED),
        ("998999999", NumberRange.OUTSIDE_ISSUED),
        ("999000000", NumberRange.TEST),
        ("999999999", NumberRange.TEST),
    ],
)
def test_ranges_at_their_boundaries(nine: str, expected: NumberRange) -> None:
    # The boundary is on the whole ten digits: every check digit of the nine falls alike.
    for last in "0123456789":
        assert nhs.number_range(nine + last) is expected
    assert nhs.number_range(f"{nine[:3]} {nine[3:6]} {nine[6:]}0") is expected


@pytest.mark.parametrize("bad", ["", "123456789", "12345678901", "99900000AB"])
def test_only_ten_digits_have_a_range(bad: str) -> None:
    with pytest.raises(ValueError):
        nhs.number_range(bad)
    assert nhs.range_label(bad) is None


def test_findings_depend_on_production_only_for_test_numbers() -> None:
    assert nhs.range_finding(ISSUED, production=True) is None
    assert nhs.range_finding(TEST_NUMBER, production=False) is None
    test = nhs.range_finding(TEST_NUMBER, production=True)
    assert test is not None and test.kind == "nhs-test-number" and not test.linkable
    assert TEST_NUMBER in test.reason and "test number" in test.reason
    for production in (False, True):
        outside = nhs.range_finding(OUTSIDE, production=production)
        assert outside is not None and outside.kind == "nhs-number-range" and outside.linkable
        assert OUTSIDE in outside.reason and "outside the ranges currently issued" in outside.reason


def test_production_and_demo_data_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="demo_data"):
        load_settings(environ={}, data_dir=tmp_path, production=True, demo_data=True)
    env = {"SOLENT_PRODUCTION": "true"}
    assert load_settings(environ=env, data_dir=tmp_path).production is True
    assert load_settings(environ={}, data_dir=tmp_path).production is False


# -- HL7 ADT and DICOM ingest --------------------------------------------------------------------


def _archive(tmp_path: Path, production: bool, **extra: str) -> Iterator[Archive]:
    a = build_archive(
        load_settings(environ={}, data_dir=tmp_path / "var", production=production, **extra)
    )
    try:
        for code in ("ZZA", "ZZB"):
            a.index.add_trust(code, f"Trust {code}")
            add_sender(a.index, "*", code, ("127.0.0.1",), code)
        yield a
    finally:
        a.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Archive]:
    """A production archive on SQLite and on PostgreSQL (whose access rule is SQL of its own)."""
    if request.param == "sqlite":
        yield from _archive(tmp_path, production=True)
        return
    url = request.getfixturevalue("fresh_postgres_url")
    yield from _archive(tmp_path, production=True, database_url=url)


@pytest.fixture
def training(tmp_path: Path) -> Iterator[Archive]:
    yield from _archive(tmp_path, production=False)


def _a28(trust: str, control: str, local_id: str, number: str) -> str:
    pid = ["PID", "1", "", f"{local_id}^^^{trust}^MR~{number}^^^NHS^NH", "", "PEN^TESTER"]
    pid += ["", "19800101", "F"] + [""] * 23 + ["NSTS01"]  # PID-32: traced on PDS
    assert pid[32] == "NSTS01"
    return (
        f"MSH|^~\\&|PAS|{trust}|PACS|ZZX|20261205120000||ADT^A28^ADT_A05|{control}|P|2.5\r"
        "EVN|A28|20261205120000\r" + "|".join(pid) + "\r"
    )


def _send_both_trusts(archive: Archive, number: str, tag: str) -> tuple[int, int]:
    s = archive.services
    handler = Hl7Handler(s, gate=SenderGate(s.directory, s.audit))
    for trust in ("ZZA", "ZZB"):
        reply = handler.handle(_a28(trust, f"{tag}-{trust}", f"{tag}{trust}", number), LOCAL)
        msa = next(seg for seg in reply.split("\r") if seg.startswith("MSA|"))
        assert msa.startswith("MSA|AA|"), reply
    pks = []
    for trust in ("ZZA", "ZZB"):
        found = archive.identity.resolve(trust, f"{tag}{trust}")
        assert found is not None
        pks.append(found.patient_pk)
    return pks[0], pks[1]


def _items(archive: Archive) -> list[tuple[str, str | None, str | None]]:
    return sorted(
        (w["kind"], w["local_id"], w["nhs_number"])
        for w in archive.identity.work_queue()
        if w["kind"] in RANGE_KINDS
    )


def _stored(archive: Archive, pk: int) -> tuple[str, bool]:
    rec = archive.identity.record(pk)
    assert rec is not None
    return rec["record"]["nhs_number"], rec["record"]["nhs_number_valid"]


def test_adt_test_number_in_production_is_kept_queued_and_never_links(live: Archive) -> None:
    a, b = _send_both_trusts(live, TEST_NUMBER, "T")
    assert _stored(live, a) == (TEST_NUMBER, False) and _stored(live, b) == (TEST_NUMBER, False)
    assert live.identity.linked_patient_pks(a) == {a}  # traced (NSTS01), yet not linked
    clinician = Principal(PrincipalKind.USER, "drza", "ZZA", frozenset({"clinician"}))
    assert live.access.visible_among(clinician, [a, b]) == {a}  # ZZB's record stays ZZB's
    assert live.identity.by_nhs_number(TEST_NUMBER) == set()
    assert _items(live) == [
        ("nhs-test-number", "TZZA", TEST_NUMBER),
        ("nhs-test-number", "TZZB", TEST_NUMBER),
    ]
    detail = next(w["detail"] for w in live.identity.work_queue() if w["local_id"] == "TZZA")
    assert "test number" in detail and "never used to link" in detail
    # Nor is it a second, misleading item: the test number is the one finding.
    assert {w["kind"] for w in live.identity.work_queue()} == {"nhs-test-number"}


def test_adt_number_outside_the_issued_ranges_is_a_warning_and_still_links(live: Archive) -> None:
    a, b = _send_both_trusts(live, OUTSIDE, "O")
    assert _stored(live, a) == (OUTSIDE, True)
    assert live.identity.linked_patient_pks(a) == {a, b}
    clinician = Principal(PrincipalKind.USER, "drza", "ZZA", frozenset({"clinician"}))
    assert live.access.visible_among(clinician, [a, b]) == {a, b}  # a warning, still linked
    assert _items(live) == [
        ("nhs-number-range", "OZZA", OUTSIDE),
        ("nhs-number-range", "OZZB", OUTSIDE),
    ]
    # The same A28 again does not queue the warning twice.
    _send_both_trusts(live, OUTSIDE, "O")
    assert len(_items(live)) == 2


def test_adt_issued_number_in_production_links_with_nothing_queued(live: Archive) -> None:
    a, b = _send_both_trusts(live, ISSUED, "I")
    assert live.identity.linked_patient_pks(a) == {a, b}
    assert live.identity.work_queue() == []


def test_adt_test_number_outside_production_is_an_ordinary_number(training: Archive) -> None:
    a, b = _send_both_trusts(training, TEST_NUMBER, "T")
    assert _stored(training, a) == (TEST_NUMBER, True)
    assert training.identity.linked_patient_pks(a) == {a, b}
    assert training.identity.work_queue() == []


def _ingest(archive: Archive, tmp_path: Path, local_id: str, number: str) -> int:
    path = write_ct(
        tmp_path / f"{local_id}.dcm",
        patient_id=local_id,
        issuer="ZZA",
        name="DOE^JANE",
        birth_date="19800101",
        sex="F",
        accession=f"ACC{local_id}",
        study_uid=f"2.25.{abs(hash(local_id)) % 10**12}",
        study_date="20250101",
        nhs_number=number,
    )
    who = Principal(PrincipalKind.IMPORTER, "test", "ZZA")
    assert archive.ingestor.ingest_file(path, who, Provenance(Channel.IMPORT)).ok
    found = archive.identity.resolve("ZZA", local_id)
    assert found is not None
    return found.patient_pk


def test_images_in_production_queue_test_and_out_of_range_numbers(
    live: Archive, tmp_path: Path
) -> None:
    test_pk = _ingest(live, tmp_path, "D1", TEST_NUMBER)
    outside_pk = _ingest(live, tmp_path, "D2", OUTSIDE)
    issued_pk = _ingest(live, tmp_path, "D3", ISSUED)
    assert _stored(live, test_pk) == (TEST_NUMBER, False)  # kept, never links
    assert _stored(live, outside_pk) == (OUTSIDE, True)
    assert _stored(live, issued_pk) == (ISSUED, True)
    assert _items(live) == [
        ("nhs-number-range", "D2", OUTSIDE),
        ("nhs-test-number", "D1", TEST_NUMBER),
    ]
    details = {w["local_id"]: w["detail"] for w in live.identity.work_queue()}
    assert "from the images" in details["D1"] and "test number" in details["D1"]
    assert "invalid-nhs-number" not in {w["kind"] for w in live.identity.work_queue()}


def test_images_outside_production_queue_only_the_out_of_range_number(
    training: Archive, tmp_path: Path
) -> None:
    test_pk = _ingest(training, tmp_path, "D1", TEST_NUMBER)
    _ingest(training, tmp_path, "D2", OUTSIDE)
    assert _stored(training, test_pk) == (TEST_NUMBER, True)
    assert _items(training) == [("nhs-number-range", "D2", OUTSIDE)]


# -- the demo ------------------------------------------------------------------------------------


def test_the_demo_queues_no_range_items_and_shows_the_range(
    demo: Archive, demo_client: TestClient
) -> None:
    assert demo.settings.production is False
    assert [w for w in demo.identity.work_queue() if w["kind"] in RANGE_KINDS] == []
    h = add_user(demo, "drza", "ZZA", "clinician")
    r = demo_client.get("/api/identity/person", params={"nhs_number": ALICE}, headers=h)
    assert r.status_code == 200, r.text
    records = r.json()["records"]
    assert records and {rec["nhs_number_range"] for rec in records} == {"test"}
    links = demo_client.get(
        "/api/identity/links", params={"issuer": "ZZA", "patient_id": "A100001"}, headers=h
    )
    assert links.status_code == 200, links.text
    assert [x["nhs_number_range"] for x in links.json()] == ["test"]  # her ZZB record
