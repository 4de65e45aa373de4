"""PS3.4 C.2.2.2 matching rules -> query AST (pure; the SQL side is in tests/contract)."""

from __future__ import annotations

import pytest

from solent.domain.attributes import Level
from solent.domain.matching import (
    AnyOf,
    Fuzzy,
    InformationModel,
    Range,
    Single,
    UnknownAttribute,
    ValueList,
    Wildcard,
    like_pattern,
    parse_query,
    scope_patient_identity,
)
from solent.errors import InvalidInput
from solent.index.query import glob_pattern


def matcher(level: Level, key: str, value: str | list[str] | None, **kw: bool) -> object:
    q = parse_query(level, {key: value}, **kw)
    c = q.condition(q.conditions[0].keyword) if q.conditions else None
    return c.matcher if c else None


def test_universal_matching_for_empty_none_and_star() -> None:
    q = parse_query(Level.STUDY, {"PatientName": "", "StudyDate": None, "AccessionNumber": "*"})
    assert q.conditions == ()
    assert q.requested == ("PatientName", "StudyDate", "AccessionNumber")


def test_single_value_is_trimmed() -> None:
    assert matcher(Level.STUDY, "AccessionNumber", " ZZA19004411 ") == Single("ZZA19004411")


def test_wildcards_become_like_with_sql_wildcards_escaped() -> None:
    m = matcher(Level.STUDY, "StudyDescription", "50%_off*\\x?")
    # A backslash separates values in C-FIND: two values, each its own pattern.
    assert isinstance(m, AnyOf)
    first, second = m.matchers
    assert first == Wildcard("50%_off*", "50\\%\\_off%")
    assert second == Wildcard("x?", "x_")
    assert like_pattern("a\\b") == "a\\\\b"
    assert glob_pattern("A[1]*") == "A[[]1]*"


def test_list_of_uids_from_cfind_and_qido() -> None:
    cfind = matcher(Level.STUDY, "StudyInstanceUID", "1.2.3\\1.2.4")
    qido = matcher(Level.STUDY, "StudyInstanceUID", "1.2.3,1.2.4")
    listed = matcher(Level.STUDY, "StudyInstanceUID", ["1.2.3", "1.2.4"])
    assert cfind == qido == listed == ValueList(("1.2.3", "1.2.4"))


@pytest.mark.parametrize("bad", ["1.2.x", "1.2.*", "1..2", "1." + "2" * 70])
def test_bad_uid_is_invalid_input(bad: str) -> None:
    with pytest.raises(InvalidInput, match="StudyInstanceUID"):
        parse_query(Level.STUDY, {"StudyInstanceUID": bad})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20190502", Single("20190502")),
        ("20190101-20191231", Range("20190101", "20191231")),
        ("-20191231", Range(None, "20191231")),
        ("20190101-", Range("20190101", None)),
        ("2019-01-01", Single("20190101")),
        ("2019-01-01-2019-12-31", Range("20190101", "20191231")),
    ],
)
def test_date_single_and_ranges(value: str, expected: object) -> None:
    assert matcher(Level.STUDY, "StudyDate", value) == expected


@pytest.mark.parametrize("bad", ["2019", "20191301", "20191231-20190101", "-", "2019*", "abc"])
def test_bad_dates_are_invalid_input(bad: str) -> None:
    with pytest.raises(InvalidInput, match="StudyDate"):
        parse_query(Level.STUDY, {"StudyDate": bad})


def test_time_ranges_pad_to_the_whole_unit() -> None:
    assert matcher(Level.STUDY, "StudyTime", "10-11") == Range("100000", "115959")
    assert matcher(Level.STUDY, "StudyTime", "1015") == Range("101500", "101559")
    assert matcher(Level.STUDY, "StudyTime", "-10:30") == Range(None, "103059")
    assert matcher(Level.STUDY, "StudyTime", "101530.123-") == Range("101530", None)
    with pytest.raises(InvalidInput, match="StudyTime"):
        parse_query(Level.STUDY, {"StudyTime": "2561"})


def test_person_names_upper_cased_by_policy() -> None:
    q = parse_query(Level.PATIENT, {"PatientName": "carter^j*"})
    assert q.conditions[0].case_insensitive
    assert q.conditions[0].matcher == Wildcard("CARTER^J*", "CARTER^J%")
    q = parse_query(Level.PATIENT, {"PatientName": "carter^j*"}, pn_case_insensitive=False)
    assert not q.conditions[0].case_insensitive
    assert q.conditions[0].matcher == Wildcard("carter^j*", "carter^j%")
    # Non-PN strings are never upper-cased.
    assert matcher(Level.STUDY, "StudyDescription", "ct Head") == Single("ct Head")


def test_fuzzy_names() -> None:
    assert matcher(Level.PATIENT, "PatientName", "smi", fuzzy_names=True) == Fuzzy("SMI")
    assert matcher(Level.STUDY, "ReferringPhysicianName", "jo*", fuzzy_names=True) == Fuzzy("JO")


def test_modalities_in_study_multiple_values() -> None:
    assert matcher(Level.STUDY, "ModalitiesInStudy", "CT\\MR") == ValueList(("CT", "MR"))
    assert matcher(Level.STUDY, "ModalitiesInStudy", "CT") == Single("CT")


def test_integers() -> None:
    assert matcher(Level.SERIES, "SeriesNumber", "3") == Single("3")
    with pytest.raises(InvalidInput, match="SeriesNumber"):
        parse_query(Level.SERIES, {"SeriesNumber": "three"})


def test_keys_of_lower_levels_and_unknown_keys() -> None:
    with pytest.raises(UnknownAttribute) as err:
        parse_query(Level.STUDY, {"Modality": "CT", "NoSuchKeyword": "x", "PatientSex": "M"})
    assert err.value.keywords == ("Modality", "NoSuchKeyword")
    assert isinstance(err.value, InvalidInput)
    assert "Modality" in str(err.value)
    q = parse_query(Level.STUDY, {"Modality": "CT", "PatientSex": "M"}, ignore_unknown=True)
    assert q.ignored == ("Modality",)
    assert [c.keyword for c in q.conditions] == ["PatientSex"]


def test_higher_level_keys_tags_and_aliases() -> None:
    q = parse_query(
        Level.IMAGE,
        {
            "0020000D": "1.2.3",
            "SeriesInstanceUID": "1.2.3.4",
            "IssuerOfAccessionNumberSequence.LocalNamespaceEntityID": "ZZA",
            "NHSNumber": "9434765919",
        },
    )
    kws = {c.keyword: c.matcher for c in q.conditions}
    assert kws["StudyInstanceUID"] == Single("1.2.3")
    assert kws["SeriesInstanceUID"] == Single("1.2.3.4")
    assert kws["IssuerOfAccessionNumber"] == Single("ZZA")
    assert kws["NHSNumber"] == Single("9434765919")


def test_attribute_paths_may_use_tags() -> None:
    q = parse_query(Level.STUDY, {"00101002.00100020": "9434765919", "00101002.00100021": "NHS"})
    c = q.condition("NHSNumber")
    assert c is not None and c.matcher == Single("9434765919")
    assert not q.never
    assert q.requested == ("00101002.00100020", "00101002.00100021")


def test_other_patient_ids_sequence_item_with_another_issuer_matches_nothing() -> None:
    q = parse_query(
        Level.STUDY,
        {
            "OtherPatientIDsSequence.PatientID": "9990000026",
            "OtherPatientIDsSequence.IssuerOfPatientID": "NHS",
        },
    )
    assert not q.never
    assert q.condition("NHSNumber") is not None
    q = parse_query(
        Level.STUDY,
        {
            "OtherPatientIDsSequence.PatientID": "9990000026",
            "OtherPatientIDsSequence.IssuerOfPatientID": "ZZB",
        },
    )
    assert q.never


def test_patient_id_is_an_identity_not_a_plain_condition() -> None:
    q = parse_query(Level.STUDY, {"PatientID": "A123456", "IssuerOfPatientID": "zza"})
    assert q.identity is not None
    assert q.identity.local_id == Single("A123456")
    assert q.identity.issuers == ("ZZA",)
    assert q.condition("PatientID") is None


def test_r24_unqualified_patient_id_takes_the_callers_trust() -> None:
    q = parse_query(Level.STUDY, {"PatientID": "A123456"})
    scoped = scope_patient_identity(q, "ZZA")
    assert scoped.identity is not None
    assert scoped.identity.issuers == ("ZZA",)
    assert scoped.viewer_trust == "ZZA"
    assert scope_patient_identity(scoped, "ZZA") == scoped


def test_r24_unqualified_patient_id_without_a_trust_is_refused() -> None:
    q = parse_query(Level.STUDY, {"PatientID": "A123456"})
    with pytest.raises(InvalidInput, match="IssuerOfPatientID"):
        scope_patient_identity(q, None)
    # An explicit issuer needs no caller trust; a wildcard issuer is not an issuer.
    explicit = parse_query(Level.STUDY, {"PatientID": "A123456", "IssuerOfPatientID": "ZZC"})
    assert scope_patient_identity(explicit, None).identity is not None
    with pytest.raises(InvalidInput, match="wildcards"):
        parse_query(Level.STUDY, {"PatientID": "A123456", "IssuerOfPatientID": "ZZ*"})


def test_nhs_issuer_and_universal_entity_id() -> None:
    q = parse_query(Level.STUDY, {"PatientID": "9990000026", "IssuerOfPatientID": "nhs"})
    assert q.identity is not None and q.identity.by_nhs_number
    q = parse_query(
        Level.STUDY,
        {
            "PatientID": "9990000026",
            "IssuerOfPatientIDQualifiersSequence.UniversalEntityID": "2.16.840.1.113883.2.1.4.1",
        },
    )
    assert q.identity is not None and q.identity.by_nhs_number
    with pytest.raises(InvalidInput, match="UniversalEntityID"):
        parse_query(
            Level.STUDY,
            {"PatientID": "A1", "IssuerOfPatientIDQualifiersSequence.UniversalEntityID": "1.2.3"},
        )


def test_issuer_alone_is_a_plain_condition() -> None:
    q = parse_query(Level.PATIENT, {"IssuerOfPatientID": "ZZB"})
    assert q.identity is None
    c = q.condition("IssuerOfPatientID")
    assert c is not None and c.matcher == ValueList(("ZZB",))


def test_information_models() -> None:
    with pytest.raises(InvalidInput, match="Study Root"):
        parse_query(Level.PATIENT, {}, model=InformationModel.STUDY_ROOT)
    # Relational keys above the level are accepted in both models.
    q = parse_query(
        Level.SERIES, {"StudyInstanceUID": "1.2.3\\1.2.4"}, model=InformationModel.STUDY_ROOT
    )
    assert q.condition("StudyInstanceUID") is not None
    q = parse_query(Level.STUDY, {"PatientID": "A*"}, model=InformationModel.PATIENT_ROOT)
    assert q.identity is not None and q.identity.local_id == Wildcard("A*", "A%")
    q = parse_query(
        Level.SERIES, {"StudyInstanceUID": "1.2.3"}, model=InformationModel.PATIENT_ROOT
    )
    assert q.single_value("StudyInstanceUID") == "1.2.3"


def test_computed_counts_are_return_only() -> None:
    assert parse_query(Level.PATIENT, {"NumberOfPatientRelatedStudies": ""}).conditions == ()
    with pytest.raises(InvalidInput, match="universal"):
        parse_query(Level.PATIENT, {"NumberOfPatientRelatedStudies": "2"})
