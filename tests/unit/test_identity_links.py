"""The cross-trust patient index: when records link, when they must not, and reversal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from solent.app import Archive, build_archive
from solent.domain.principal import REGIONAL_IDENTITY_SOURCE, Principal, PrincipalKind
from solent.services.identity import (
    Change,
    Demographics,
    IdentityRejected,
    IdentityService,
    PatientKey,
)
from solent.settings import load_settings

#: These tests are about the link rule, so the changes come from a regional identity source
#: (a trust's own feed may change its own records only: test_guarded_door).
PAS = Change(Principal(PrincipalKind.NODE, "hl7:EMPI", None, frozenset({REGIONAL_IDENTITY_SOURCE})))
NHS = "9990000026"


def person(**kw: str | None) -> Demographics:
    base = {"name": "CARTER^JAMES", "birth_date": "19620417", "sex": "M"}
    base.update(kw)  # type: ignore[arg-type]
    return Demographics(**base)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def ids(
    request: pytest.FixtureRequest, archive: Archive, tmp_path: Path
) -> Iterator[IdentityService]:
    """The identity service on the embedded SQLite archive and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        archive.index.add_trust("ZZC", "Trust C")
        yield IdentityService(archive.index)
        return
    url = request.getfixturevalue("fresh_postgres_url")
    pg = build_archive(
        load_settings(environ={"SOLENT_DATABASE_URL": url}, data_dir=tmp_path / "pg")
    )
    try:
        for code in ("ZZA", "ZZB", "ZZC"):
            pg.index.add_trust(code, f"Trust {code}")
        yield IdentityService(pg.index)
    finally:
        pg.close()


def rec(ids: IdentityService, issuer: str, local_id: str, **kw: str | None) -> int:
    return ids.update_record(PatientKey(issuer, local_id), person(**kw), PAS)


def test_verified_nhs_number_links_records_across_trusts(ids: IdentityService) -> None:
    a = rec(ids, "ZZA", "A1", nhs_number=NHS, nhs_status="NSTS01")
    b = rec(ids, "ZZB", "B1", nhs_number=NHS, nhs_status="NSTS01")
    assert ids.linked_patient_pks(a) == {a, b}
    assert ids.by_nhs_number(NHS) == {a, b}
    assert [x["linked_by"] for x in ids.links_of(a)] == ["nhs-number"]


def test_untraced_number_does_not_link(ids: IdentityService) -> None:
    a = rec(ids, "ZZA", "A1", nhs_number=NHS, nhs_status="NSTS01")
    b = rec(ids, "ZZB", "B1", nhs_number=NHS, nhs_status="NSTS02")
    assert ids.linked_patient_pks(a) == {a}
    assert b not in ids.by_nhs_number(NHS)
    assert {w["kind"] for w in ids.work_queue()} == {"nhs-number-not-verified"}


def test_same_local_id_at_two_trusts_is_two_patients(ids: IdentityService) -> None:
    a = rec(ids, "ZZA", "X1", nhs_number=NHS, nhs_status="NSTS01")
    c = rec(ids, "ZZC", "X1", nhs_number="9990000018", nhs_status="NSTS01", birth_date="19900101")
    assert a != c
    assert ids.linked_patient_pks(a) == {a}


def test_conflicting_birth_date_never_links_and_is_queued(ids: IdentityService) -> None:
    a = rec(ids, "ZZA", "A1", nhs_number=NHS, nhs_status="NSTS01")
    b = rec(ids, "ZZB", "B1", nhs_number=NHS, nhs_status="NSTS01")
    d = rec(ids, "ZZC", "C1", nhs_number=NHS, nhs_status="NSTS01", birth_date="19700101")
    assert ids.linked_patient_pks(d) == {d}
    # The number names the agreeing records, not the odd one out.
    assert ids.by_nhs_number(NHS) == {a, b}
    assert any(w["kind"] == "demographic-conflict" for w in ids.work_queue())


def test_one_local_id_with_two_nhs_numbers_is_queued_and_unlinked(ids: IdentityService) -> None:
    a = rec(ids, "ZZA", "A1", nhs_number=NHS, nhs_status="NSTS01")
    b = rec(ids, "ZZB", "B1", nhs_number=NHS, nhs_status="NSTS01")
    rec(ids, "ZZA", "A1", nhs_number="9991112227", nhs_status="NSTS01")
    assert ids.linked_patient_pks(a) == {a}
    assert ids.linked_patient_pks(b) == {b}
    assert any(w["kind"] == "nhs-number-changed" for w in ids.work_queue())


def test_unlink_blocks_the_nhs_link_and_reverse_restores_it(ids: IdentityService) -> None:
    a = rec(ids, "ZZA", "A1", nhs_number=NHS, nhs_status="NSTS01")
    b = rec(ids, "ZZB", "B1", nhs_number=NHS, nhs_status="NSTS01")
    ids.unlink(PatientKey("ZZA", "A1"), PatientKey("ZZB", "B1"), PAS)
    assert ids.linked_patient_pks(a) == {a}
    event = next(e for e in ids.history(a) if e["kind"] == "unlink")
    ids.reverse(event["pk"], PAS.principal)
    assert ids.linked_patient_pks(a) == {a, b}
    with pytest.raises(Exception, match="already reversed"):
        ids.reverse(event["pk"], PAS.principal)


def test_explicit_link_is_transitive_and_keeps_records_distinct(ids: IdentityService) -> None:
    a = rec(ids, "ZZA", "A1")
    b = rec(ids, "ZZB", "B1")
    c = rec(ids, "ZZC", "C1")
    ids.link(PatientKey("ZZA", "A1"), PatientKey("ZZB", "B1"), PAS, source="hl7:A24")
    ids.link(PatientKey("ZZB", "B1"), PatientKey("ZZC", "C1"), PAS, source="hl7:A24")
    assert ids.linked_patient_pks(a) == {a, b, c}
    assert ids.current_patient_attributes(patient_pk=b)["PatientID"] == "B1"
    with pytest.raises(IdentityRejected, match="unknown patient"):
        ids.link(PatientKey("ZZA", "A1"), PatientKey("ZZB", "NOPE"), PAS)


def test_merge_is_idempotent_and_same_authority_only(ids: IdentityService) -> None:
    rec(ids, "ZZB", "TMP1", name="UNKNOWN^MALE")
    target = rec(ids, "ZZB", "B1")
    with pytest.raises(IdentityRejected, match="different trusts"):
        ids.merge(PatientKey("ZZB", "B1"), PatientKey("ZZA", "TMP1"), person(), PAS)
    assert ids.merge(PatientKey("ZZB", "B1"), PatientKey("ZZB", "TMP1"), person(), PAS) == target
    events = len(ids.history(target))
    assert ids.merge(PatientKey("ZZB", "B1"), PatientKey("ZZB", "TMP1"), person(), PAS) == target
    assert len(ids.history(target)) == events
    found = ids.resolve("ZZB", "TMP1")
    assert found is not None and found.retired and found.patient_pk == target


def test_renumber_refuses_collisions_and_reverses(ids: IdentityService) -> None:
    a = rec(ids, "ZZA", "A1")
    rec(ids, "ZZA", "A2")
    with pytest.raises(IdentityRejected, match="already names another record"):
        ids.change_identifier(PatientKey("ZZA", "A2"), PatientKey("ZZA", "A1"), PAS)
    ids.change_identifier(PatientKey("ZZA", "A9"), PatientKey("ZZA", "A1"), PAS)
    assert ids.resolve("ZZA", "A9") == ids.resolve("ZZA", "A9")
    assert ids.resolve("ZZA", "A1").retired  # type: ignore[union-attr]
    event = next(e for e in ids.history(a) if e["kind"] == "renumber")
    ids.reverse(event["pk"], PAS.principal)
    found = ids.resolve("ZZA", "A1")
    assert found is not None and not found.retired and found.patient_pk == a


def test_update_reversal_restores_demographics(ids: IdentityService) -> None:
    a = rec(ids, "ZZA", "A1")
    rec(ids, "ZZA", "A1", name="CARTER^JIM")
    event = [e for e in ids.history(a) if e["kind"] == "update"][-1]
    assert event["before"] == {"name": "CARTER^JAMES"}
    ids.reverse(event["pk"], PAS.principal)
    assert ids.current_patient_attributes(patient_pk=a)["PatientName"] == "CARTER^JAMES"


def test_current_attributes_carry_the_nhs_number(ids: IdentityService) -> None:
    a = rec(ids, "ZZA", "A1", nhs_number=NHS, nhs_status="NSTS01")
    attrs = ids.current_patient_attributes(patient_pk=a)
    (other,) = attrs["OtherPatientIDsSequence"]
    assert (other["PatientID"], other["IssuerOfPatientID"]) == (NHS, "NHS")
    qualifiers = other["IssuerOfPatientIDQualifiersSequence"][0]
    assert qualifiers["UniversalEntityID"] == "2.16.840.1.113883.2.1.4.1"


def test_batched_walk_finds_what_the_walk_of_each_record_finds(ids: IdentityService) -> None:
    """components()/records_seen_from() (a page of query results at once) give the records
    linked_patient_pks()/record_seen_from() give one by one: explicit links followed
    transitively, derived NHS-number links, an "unlinked" decision blocking one."""
    a = rec(ids, "ZZA", "A1", nhs_number=NHS, nhs_status="NSTS01")
    b = rec(ids, "ZZB", "B1", nhs_number=NHS, nhs_status="NSTS01")
    c = rec(ids, "ZZC", "C1")
    ids.link(PatientKey("ZZB", "B1"), PatientKey("ZZC", "C1"), PAS, source="hl7:A24")
    d = rec(ids, "ZZB", "B2", nhs_number="9990000034", nhs_status="NSTS01")
    e = rec(ids, "ZZC", "C2", nhs_number="9990000034", nhs_status="NSTS01")
    ids.unlink(PatientKey("ZZB", "B2"), PatientKey("ZZC", "C2"), PAS)
    alone = rec(ids, "ZZC", "C3")
    pks = [a, b, c, d, e, alone]
    with ids._index.read() as conn:
        batched = ids.components(conn, pks)
        assert batched == {pk: ids.linked_patient_pks(pk, conn=conn) for pk in pks}
        assert batched[c] == {a, b, c} and batched[d] == {d}
        for trust in ("ZZA", "ZZB", "ZZC"):
            shown = ids.records_seen_from(pks, trust, conn=conn)
            one_by_one = {pk: ids.record_seen_from(pk, trust, conn=conn) for pk in pks}
            assert shown == {pk: r for pk, r in one_by_one.items() if r is not None}
        assert ids.records_seen_from(pks, "ZZA", conn=conn)[c]["pk"] == a
