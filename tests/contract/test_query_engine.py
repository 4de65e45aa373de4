"""The query engine C-FIND and QIDO-RS share, on SQLite and PostgreSQL alike.

The data goes in through the one ingest pipeline (real Part 10 files written with pydicom), so
what is matched is what a modality's files produce. The cast follows the regional requirements
(section 2.7): CARTER at ZZA (A123456) and ZZB (B7654321) linked by a verified NHS number, an
unrelated ZZC patient who also has MRN A123456, and ZZD's unverified record of the same number.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import Connection, Select, insert, select

from solent.app import Archive, build_archive
from solent.domain.attributes import Level
from solent.domain.matching import parse_query
from solent.domain.outcomes import Outcome
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.errors import InvalidInput
from solent.index import schema as t
from solent.index.identity import linkable_patients
from solent.index.sql import now
from solent.services.query import QueryResult, QueryService
from solent.services.trust_view import OTHER_IDS
from solent.settings import load_settings

ROOT = "1.2.826.0.1.3680043.10.1455.77."
NHS_CARTER = "9990000026"
NHS_OTHER = "9990000018"
NHS_OBRIEN = "9990000034"
CT, MR, SR, US = (
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.6.1",
)


@dataclass(frozen=True)
class Patient:
    trust: str
    local_id: str
    name: str
    birth_date: str
    sex: str
    nhs: str | None
    verified: bool


CARTER_A = Patient("ZZA", "A123456", "CARTER^JAMES^PAUL", "19620417", "M", NHS_CARTER, True)
CARTER_B = Patient("ZZB", "B7654321", "CARTER^JAMES^PAUL", "19620417", "M", NHS_CARTER, True)
OTHER_C = Patient("ZZC", "A123456", "OTHER^PERSON", "19800101", "F", NHS_OTHER, False)
CARTER_D = Patient("ZZD", "D000042", "CARTER^JAMES", "19700101", "M", NHS_CARTER, False)
OBRIEN_A = Patient("ZZA", "Z999", "O'Brien^Mary", "19900203", "F", NHS_OBRIEN, False)
UNDATED_A = Patient("ZZA", "Z100", "SMITH^ANNE", "19500505", "F", None, False)


@dataclass(frozen=True)
class Study:
    key: str
    patient: Patient
    date: str | None
    time: str
    accession: str
    description: str
    series: tuple[tuple[str, str, int], ...]  # (modality, sop class, instances)


STUDIES = (
    Study("S1", CARTER_A, "20190502", "101530", "ZZA19004411", "CT HEAD", (("CT", CT, 2),)),
    Study(
        "S2",
        CARTER_B,
        "20250115",
        "020000",
        "ZZB25000123",
        "CT TRAUMA",
        (("CT", CT, 1), ("SR", SR, 1)),
    ),
    Study("S3", OTHER_C, "20230303", "120000", "ZZC23000001", "MR KNEE", (("MR", MR, 1),)),
    Study("S4", OBRIEN_A, "20230630", "2300", "ZZA23000002", "50% off_study", (("US", US, 1),)),
    Study("S5", UNDATED_A, None, "", "ZZA00000003", "500 offXstudy", (("US", US, 1),)),
    Study("S6", CARTER_D, "20240101", "080000", "ZZB25000123", "CT CHEST", (("CT", CT, 1),)),
)


def uid(*parts: object) -> str:
    return ROOT + ".".join(str(p) for p in parts)


def study_uid(key: str) -> str:
    return uid(int(key[1:]))


def write(path: Path, study: Study, series_no: int, instance_no: int) -> None:
    modality, sop_class, _ = study.series[series_no - 1]
    p = study.patient
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid(int(study.key[1:]), series_no, instance_no)
    ds.StudyInstanceUID = study_uid(study.key)
    ds.SeriesInstanceUID = uid(int(study.key[1:]), series_no)
    ds.PatientName = p.name
    ds.PatientID = p.local_id
    ds.IssuerOfPatientID = p.trust
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = p.sex
    if p.nhs:
        item = Dataset()
        item.PatientID = p.nhs
        item.IssuerOfPatientID = "NHS"
        item.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = Sequence([item])
    if study.date:
        ds.StudyDate = study.date
        ds.SeriesDate = study.date
    if study.time:
        ds.StudyTime = study.time
    ds.AccessionNumber = study.accession
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = study.patient.trust
    ds.IssuerOfAccessionNumberSequence = Sequence([issuer])
    ds.StudyDescription = study.description
    ds.ReferringPhysicianName = "WHO^DOCTOR"
    ds.StudyID = study.key
    ds.Modality = modality
    ds.SeriesNumber = series_no
    ds.InstanceNumber = instance_no
    if modality != "SR":
        ds.Rows, ds.Columns = 4, 2
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = bytes(range(16))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def load(archive: Archive, workdir: Path) -> None:
    for code in ("ZZA", "ZZB", "ZZC", "ZZD"):
        archive.index.add_trust(code, f"Trust {code}")
    for study in STUDIES:
        sender = Principal(PrincipalKind.NODE, f"MOD_{study.patient.trust}", study.patient.trust)
        for s_no, (_, _, count) in enumerate(study.series, start=1):
            for i_no in range(1, count + 1):
                path = workdir / f"{study.key}-{s_no}-{i_no}.dcm"
                write(path, study, s_no, i_no)
                result = archive.ingestor.ingest_file(path, sender, Provenance(Channel.IMPORT))
                assert result.outcome is Outcome.STORED, result
    for p in (CARTER_A, CARTER_B, OTHER_C, CARTER_D, OBRIEN_A, UNDATED_A):
        if p.verified:
            archive.index.mark_nhs_verified(p.trust, p.local_id)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    """One loaded archive per backend; PostgreSQL gets a fresh database, dropped afterwards."""
    data = tmp_path_factory.mktemp(f"query-{request.param}")
    environ: dict[str, str] = {}
    dropper = None
    if request.param == "postgresql":
        import psycopg
        from psycopg import sql

        base: str = request.getfixturevalue("postgres_url")
        admin = base.replace("postgresql+psycopg://", "postgresql://", 1)
        name = f"solent_query_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        environ["SOLENT_DATABASE_URL"] = admin.rsplit("/", 1)[0] + "/" + name

        def dropper() -> None:
            with psycopg.connect(admin, autocommit=True) as conn:
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                conn.execute(drop.format(sql.Identifier(name)))

    archive = build_archive(load_settings(environ=environ, data_dir=data / "var"))
    try:
        load(archive, data)
        yield archive
    finally:
        archive.close()
        if dropper is not None:
            dropper()


def node(trust: str | None) -> Principal:
    return Principal(PrincipalKind.NODE, f"VIEWER_{trust}", trust)


SYSTEM = Principal(PrincipalKind.SYSTEM, "solent", None)


def find(
    archive: Archive,
    level: Level,
    keys: dict[str, Any],
    *,
    who: Principal = SYSTEM,
    limit: int | None = None,
    offset: int = 0,
    max_results: int = 1000,
    **kw: Any,
) -> QueryResult:
    return archive.query.find(
        who, parse_query(level, keys, **kw), limit=limit, offset=offset, max_results=max_results
    )


def studies(result: QueryResult) -> list[str]:
    keys = {study_uid(s.key): s.key for s in STUDIES}
    return [keys[r["StudyInstanceUID"]] for r in result.rows]


# -- patient identity (R4, R24, R3) ------------------------------------------------------------


def test_unqualified_patient_id_is_scoped_to_the_callers_trust(archive: Archive) -> None:
    """Issue 15: the caller's trust's record and every record linked to it; failing a record
    of its own with that ID, another trust's record it may see (the ID a viewer was shown on
    a linked study). Never an unrelated patient, whatever ID it shares."""

    def found(who: str, pid: str, level: Level = Level.STUDY) -> set[str]:
        return set(studies(find(archive, level, {"PatientID": pid}, who=node(who))))

    assert found("ZZA", "A123456") == {"S1", "S2"}  # CARTER here and his linked ZZB study
    assert found("ZZA", "B7654321") == {"S1", "S2"}  # the ZZB ID a linked study showed
    assert found("ZZB", "A123456") == {"S1", "S2"}  # ZZB has no A123456: ZZA's CARTER
    assert found("ZZC", "A123456") == {"S3"}  # ZZC's own A123456 wins; not CARTER
    assert found("ZZD", "A123456") == set()  # ZZD may see neither A123456
    # Wildcards and lower levels are scoped the same way.
    assert found("ZZC", "A*") == {"S3"}
    images = find(archive, Level.IMAGE, {"PatientID": "A123456"}, who=node("ZZA"))
    assert {r["StudyInstanceUID"] for r in images.rows} == {study_uid("S1"), study_uid("S2")}
    assert all(r["PatientID"] == "A123456" for r in images.rows)  # shown as ZZA knows him


def test_unqualified_patient_id_without_a_trust_is_refused(archive: Archive) -> None:
    with pytest.raises(InvalidInput, match="IssuerOfPatientID"):
        find(archive, Level.STUDY, {"PatientID": "A123456"}, who=node(None))


def test_patient_id_with_issuer_matches_that_trust_only(archive: Archive) -> None:
    keys = {"PatientID": "A123456", "IssuerOfPatientID": "ZZC"}
    result = find(archive, Level.STUDY, keys)
    assert studies(result) == ["S3"]
    # The access rule (services/access.py) still applies: ZZA has no relationship with ZZC's
    # unrelated A123456, so naming the issuer does not open it.
    assert studies(find(archive, Level.STUDY, keys, who=node("ZZA"))) == []
    assert result.rows[0]["IssuerOfPatientID"] == "ZZC"
    assert find(archive, Level.PATIENT, {"PatientID": "A1*", "IssuerOfPatientID": "ZZA"}).rows[0][
        "PatientName"
    ] == ("CARTER^JAMES^PAUL")


def test_linked_records_follow_the_verified_nhs_number(archive: Archive) -> None:
    keys = {"PatientID": "A123456", "IssuerOfPatientID": "ZZA"}
    assert studies(find(archive, Level.STUDY, keys)) == ["S1"]
    linked = find(archive, Level.STUDY, keys, linked=True)
    # Q2: ZZB's study too, with ZZB's identifiers; never ZZC's A123456 nor ZZD's unverified record.
    assert studies(linked) == ["S2", "S1"]
    assert (linked.rows[0]["PatientID"], linked.rows[0]["IssuerOfPatientID"]) == (
        "B7654321",
        "ZZB",
    )


def test_other_trusts_linked_records_show_as_the_callers_own(archive: Archive) -> None:
    """The trust view in the query's one transaction (issue 16): of a page, only the records
    with a link are walked (one query finds them), and those show under the caller's record."""
    with archive.index.read() as conn:
        every = [(p.trust, p.local_id) for p in (CARTER_A, CARTER_B, OTHER_C, CARTER_D, OBRIEN_A)]
        linkable = linkable_patients(conn, every)
    # Traced NHS number shared with another trust's traced record: Carter at ZZA and ZZB only.
    assert sorted(linkable) == [("ZZA", "A123456"), ("ZZB", "B7654321")]
    rows = {r["StudyInstanceUID"]: r for r in find(archive, Level.STUDY, {}, who=node("ZZA")).rows}
    seen = rows[study_uid("S2")]  # ZZB's study of Carter, as ZZA knows him
    assert (seen["PatientID"], seen["IssuerOfPatientID"]) == ("A123456", "ZZA")
    assert seen[OTHER_IDS] == [("B7654321", "ZZB")]
    assert study_uid("S6") not in rows  # ZZD's untraced record of the number: not linked
    own = rows[study_uid("S1")]  # the caller's own record: as stored
    assert (own["PatientID"], own["IssuerOfPatientID"]) == ("A123456", "ZZA")
    assert OTHER_IDS not in own


def test_nhs_number_as_patient_id_with_issuer_nhs(archive: Archive) -> None:
    keys = {"PatientID": NHS_CARTER, "IssuerOfPatientID": "NHS"}
    # Q1: verified records of every trust.
    assert studies(find(archive, Level.STUDY, keys, who=node("ZZA"))) == ["S2", "S1"]
    # ZZD's record carries the number unverified: only ZZD itself finds it by that number.
    assert studies(find(archive, Level.STUDY, keys)) == ["S2", "S1"]
    assert "S6" in studies(find(archive, Level.STUDY, keys, who=node("ZZD")))
    other = {"NHSNumber": NHS_OTHER}
    assert studies(find(archive, Level.STUDY, other, who=node("ZZA"))) == []
    assert studies(find(archive, Level.STUDY, other, who=node("ZZC"))) == ["S3"]
    seq = {
        "OtherPatientIDsSequence.PatientID": NHS_CARTER,
        "OtherPatientIDsSequence.IssuerOfPatientID": "NHS",
    }
    assert studies(find(archive, Level.STUDY, seq, who=node("ZZB"))) == ["S2", "S1"]
    seq["OtherPatientIDsSequence.IssuerOfPatientID"] = "ZZA"
    assert studies(find(archive, Level.STUDY, seq, who=node("ZZB"))) == []


def test_an_unlink_stops_the_linked_match(archive: Archive) -> None:
    keys = {"PatientID": "A123456", "IssuerOfPatientID": "ZZA"}
    p = t.patient.c

    def pk(patient: Patient) -> int:
        with archive.index.read() as conn:
            return int(
                conn.execute(
                    select(p.pk).where(p.issuer == patient.trust, p.local_id == patient.local_id)
                ).scalar_one()
            )

    a, b = sorted((pk(CARTER_A), pk(CARTER_B)))

    def link(status: str) -> None:
        archive.index.write(
            lambda conn: conn.execute(
                insert(t.patient_link).values(
                    patient_a=a,
                    patient_b=b,
                    status=status,
                    source="admin",
                    updated_by="test",
                    updated_at=now(),
                )
            )
        )

    def unlink_all() -> None:
        archive.index.write(lambda conn: conn.execute(t.patient_link.delete()))

    try:
        link("unlinked")
        assert studies(find(archive, Level.STUDY, keys, linked=True)) == ["S1"]
    finally:
        unlink_all()
    assert studies(find(archive, Level.STUDY, keys, linked=True)) == ["S2", "S1"]


def test_an_explicit_link_adds_only_the_linked_record(archive: Archive) -> None:
    """An A24 link of two records with no shared NHS number: the linked record's studies come
    back, nobody else's (the link check once matched every record of the database)."""
    keys = {"PatientID": "Z999", "IssuerOfPatientID": "ZZA"}
    p = t.patient.c
    with archive.index.read() as conn:
        ids = dict(
            conn.execute(
                select(p.local_id, p.pk).where(
                    p.local_id.in_(["Z999", "A123456"]), p.issuer != "ZZA"
                )
            ).all()
        )
        obrien = conn.execute(
            select(p.pk).where(p.issuer == "ZZA", p.local_id == "Z999")
        ).scalar_one()
    other = int(ids["A123456"])  # OTHER_C at ZZC
    a, b = sorted((int(obrien), other))
    assert studies(find(archive, Level.STUDY, keys, linked=True)) == ["S4"]
    archive.index.write(
        lambda conn: conn.execute(
            insert(t.patient_link).values(
                patient_a=a,
                patient_b=b,
                status="linked",
                source="hl7:A24",
                updated_by="test",
                updated_at=now(),
            )
        )
    )
    try:
        assert studies(find(archive, Level.STUDY, keys, linked=True)) == ["S4", "S3"]
        assert studies(find(archive, Level.STUDY, keys)) == ["S4"]
    finally:
        archive.index.write(lambda conn: conn.execute(t.patient_link.delete()))


# -- PS3.4 C.2.2.2 matching -------------------------------------------------------------------


def test_single_value_list_of_uids_and_universal(archive: Archive) -> None:
    one = find(archive, Level.STUDY, {"StudyInstanceUID": study_uid("S3")})
    assert studies(one) == ["S3"]
    pair = {"StudyInstanceUID": f"{study_uid('S1')}\\{study_uid('S3')}"}
    assert studies(find(archive, Level.STUDY, pair)) == ["S3", "S1"]
    everything = find(archive, Level.STUDY, {"StudyDescription": "", "PatientName": None})
    # Newest first; the undated study last on every backend.
    assert studies(everything) == ["S2", "S6", "S4", "S3", "S1", "S5"]


def test_wildcards_with_sql_wildcard_characters_taken_literally(archive: Archive) -> None:
    assert studies(find(archive, Level.STUDY, {"StudyDescription": "50%*"})) == ["S4"]
    assert studies(find(archive, Level.STUDY, {"StudyDescription": "*_study"})) == ["S4"]
    assert studies(find(archive, Level.STUDY, {"StudyDescription": "50?????study"})) == []
    # "?" is any one character: "50% off_study" and "500 offXstudy" both fit.
    assert studies(find(archive, Level.STUDY, {"StudyDescription": "50??????study"})) == [
        "S4",
        "S5",
    ]
    assert studies(find(archive, Level.STUDY, {"StudyDescription": "CT*"})) == ["S2", "S6", "S1"]
    # Non-PN matching is case-sensitive on both backends (SQLite's LIKE is not).
    assert studies(find(archive, Level.STUDY, {"StudyDescription": "ct*"})) == []


def test_person_names_case_insensitive_by_policy_and_fuzzy(archive: Archive) -> None:
    assert studies(find(archive, Level.STUDY, {"PatientName": "o'brien*"})) == ["S4"]
    assert studies(find(archive, Level.STUDY, {"PatientName": "o'brien^mary"})) == ["S4"]
    strict = find(archive, Level.STUDY, {"PatientName": "o'brien*"}, pn_case_insensitive=False)
    assert studies(strict) == []
    exact = find(archive, Level.STUDY, {"PatientName": "O'Brien*"}, pn_case_insensitive=False)
    assert studies(exact) == ["S4"]
    assert studies(find(archive, Level.STUDY, {"PatientName": "mar"}, fuzzy_names=True)) == ["S4"]
    assert studies(find(archive, Level.STUDY, {"PatientName": "mar"})) == []


def test_person_names_ignore_trailing_empty_components(archive: Archive) -> None:
    """PS3.5 6.2: trailing empty components are insignificant, so a name typed with or
    without carets finds the same record (modalities pad them: ``SMITH^JOHN^^^``)."""
    for typed in ("o'brien^mary^^^", "o'brien^mary^", "o'brien^mar?^^", "O'BRIEN^MARY^^^^"):
        assert studies(find(archive, Level.STUDY, {"PatientName": typed})) == ["S4"], typed
    assert studies(find(archive, Level.STUDY, {"PatientName": "o'brien"})) == []
    assert studies(find(archive, Level.STUDY, {"PatientName": "o'brien^^^"})) == []


def test_date_ranges(archive: Archive) -> None:
    def dates(value: str) -> list[str]:
        return studies(find(archive, Level.STUDY, {"StudyDate": value}))

    assert dates("20230101-20231231") == ["S4", "S3"]
    assert dates("-20191231") == ["S1"]
    assert dates("20250101-") == ["S2"]
    assert dates("20190502") == ["S1"]
    assert dates("2023-06-30") == ["S4"]
    series = find(archive, Level.SERIES, {"SeriesDate": "20190101-20191231"})
    assert {r["StudyInstanceUID"] for r in series.rows} == {study_uid("S1")}


def test_time_ranges(archive: Archive) -> None:
    assert studies(find(archive, Level.STUDY, {"StudyTime": "10-11"})) == ["S1"]
    assert studies(find(archive, Level.STUDY, {"StudyTime": "23"})) == ["S4"]
    assert studies(find(archive, Level.STUDY, {"StudyTime": "-0300"})) == ["S2"]


def test_modalities_in_study_is_multi_valued(archive: Archive) -> None:
    assert studies(find(archive, Level.STUDY, {"ModalitiesInStudy": "SR"})) == ["S2"]
    assert studies(find(archive, Level.STUDY, {"ModalitiesInStudy": "MR\\SR"})) == ["S2", "S3"]
    row = find(archive, Level.STUDY, {"StudyInstanceUID": study_uid("S2")}).rows[0]
    assert sorted(row["ModalitiesInStudy"]) == ["CT", "SR"]
    assert (row["NumberOfStudyRelatedSeries"], row["NumberOfStudyRelatedInstances"]) == (2, 2)
    # Below the study level it still means "the study has a series of that modality" (the
    # fuzzer found a SERIES query with it failing to compile).
    series = find(archive, Level.SERIES, {"ModalitiesInStudy": "SR"}).rows
    assert sorted(r["Modality"] for r in series) == ["CT", "SR"]
    assert {r["StudyInstanceUID"] for r in series} == {study_uid("S2")}


def test_accession_number_with_its_issuer(archive: Archive) -> None:
    keys = {"AccessionNumber": "ZZB25000123"}
    assert studies(find(archive, Level.STUDY, keys)) == ["S2", "S6"]
    keys["IssuerOfAccessionNumberSequence.LocalNamespaceEntityID"] = "ZZB"
    result = find(archive, Level.STUDY, keys)
    assert studies(result) == ["S2"]
    assert result.rows[0]["IssuerOfAccessionNumber"] == "ZZB"


# -- levels and row contents --------------------------------------------------------------------


def test_patient_level_rows_and_counts(archive: Archive) -> None:
    result = find(archive, Level.PATIENT, {"PatientName": "carter*"})
    rows = {(r["IssuerOfPatientID"], r["PatientID"]): r for r in result.rows}
    assert set(rows) == {("ZZA", "A123456"), ("ZZB", "B7654321"), ("ZZD", "D000042")}
    b = rows[("ZZB", "B7654321")]
    assert b["NHSNumber"] == NHS_CARTER and b["NHSNumberVerified"] is True
    assert b["NumberOfPatientRelatedStudies"] == 1
    assert b["NumberOfPatientRelatedSeries"] == 2
    assert b["NumberOfPatientRelatedInstances"] == 2
    assert rows[("ZZD", "D000042")]["NHSNumberVerified"] is False


def test_series_level_in_study_order_with_higher_level_keys(archive: Archive) -> None:
    result = find(archive, Level.SERIES, {"StudyInstanceUID": study_uid("S2")})
    assert [r["Modality"] for r in result.rows] == ["CT", "SR"]
    assert [r["SeriesNumber"] for r in result.rows] == [1, 2]
    first = result.rows[0]
    assert first["SeriesInstanceUID"] == uid(2, 1)
    assert (first["PatientID"], first["IssuerOfPatientID"]) == ("B7654321", "ZZB")
    assert first["NumberOfSeriesRelatedInstances"] == 1
    assert first["AccessionNumber"] == "ZZB25000123"


def test_image_level_rows(archive: Archive) -> None:
    result = find(archive, Level.IMAGE, {"SeriesInstanceUID": uid(1, 1)})
    assert [r["InstanceNumber"] for r in result.rows] == [1, 2]
    row = result.rows[0]
    assert row["SOPInstanceUID"] == uid(1, 1, 1)
    assert row["SOPClassUID"] == CT
    assert (row["Rows"], row["Columns"], row["NumberOfFrames"]) == (4, 2, 1)
    assert row["TransferSyntaxUID"] == ExplicitVRLittleEndian
    assert row["StudyInstanceUID"] == study_uid("S1")
    assert row["PatientID"] == "A123456"
    sr = find(archive, Level.IMAGE, {"SOPClassUID": SR})
    assert [r["SOPInstanceUID"] for r in sr.rows] == [uid(2, 2, 1)]


# -- paging and the cap ---------------------------------------------------------------------------


def test_limit_offset_and_cap(archive: Archive) -> None:
    page = find(archive, Level.STUDY, {}, limit=2)
    assert studies(page) == ["S2", "S6"] and page.truncated and not page.capped
    pages = [studies(find(archive, Level.STUDY, {}, limit=2, offset=o)) for o in (0, 2, 4, 6)]
    assert pages == [["S2", "S6"], ["S4", "S3"], ["S1", "S5"], []]
    last = find(archive, Level.STUDY, {}, limit=2, offset=4)
    assert not last.truncated
    capped = find(archive, Level.STUDY, {}, max_results=3)
    assert studies(capped) == ["S2", "S6", "S4"] and capped.truncated and capped.capped
    assert capped.total_capped
    # A limit above the cap is cut to the cap and reported as capped.
    assert find(archive, Level.STUDY, {}, limit=10, max_results=3).capped
    exact = find(archive, Level.STUDY, {}, max_results=6)
    assert len(exact.rows) == 6 and not exact.truncated and not exact.capped


def test_the_access_rule_is_anded_into_every_query(archive: Archive) -> None:
    class OnlyZZC:
        def visible_patients(
            self, principal: Principal, *, conn: Connection | None = None
        ) -> Select[tuple[int]] | None:
            return select(t.patient.c.pk).where(t.patient.c.issuer == "ZZC")

    service = QueryService(archive.index, OnlyZZC())
    result = service.find(SYSTEM, parse_query(Level.STUDY, {}), limit=None, max_results=100)
    assert studies(result) == ["S3"]


def test_legacy_listings_still_work(archive: Archive) -> None:
    listed = archive.query.list_studies(SYSTEM, issuer="ZZA", local_id="A123456")
    assert [r["study_uid"] for r in listed] == [study_uid("S1")]
    assert len(archive.query.list_patients(SYSTEM)) == 6
    assert archive.query.stats(SYSTEM)["studies"] == 6


# -- the synthetic filler used by bench/query_index.py ------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_fill_synthetic_rows_are_queryable_and_ingest_continues_after(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from solent.domain.nhs_number import is_valid
    from solent.index.bulk import fill_synthetic

    environ = {}
    if backend == "postgresql":
        environ["SOLENT_DATABASE_URL"] = request.getfixturevalue("fresh_postgres_url")
    fresh = build_archive(load_settings(environ=environ, data_dir=tmp_path / "var"))
    try:
        summary = fill_synthetic(fresh.index, 30, studies_per_patient=3, series_per_study=2)
        assert (summary.studies, summary.patients, summary.series) == (30, 10, 60)
        assert all(is_valid(n) for n in summary.sample_nhs_numbers)
        trusts = {issuer for issuer, _ in summary.sample_patients}
        assert trusts == {"ZZA", "ZZB", "ZZC", "ZZD"}
        every = fresh.query.find(SYSTEM, parse_query(Level.STUDY, {}), limit=None, max_results=100)
        assert len(every.rows) == 30
        dates = [r["StudyDate"] for r in every.rows]
        assert dates == sorted(dates, reverse=True)
        issuer, local_id = summary.sample_patients[3]
        mine = fresh.query.find(
            node(issuer),
            parse_query(Level.STUDY, {"PatientID": local_id}),
            limit=None,
            max_results=100,
        )
        assert len(mine.rows) == 3 and {r["IssuerOfPatientID"] for r in mine.rows} == {issuer}
        # A second fill and a real ingest after it find free primary keys (PostgreSQL sequences).
        fill_synthetic(fresh.index, 5, seed=2)
        path = tmp_path / "after.dcm"
        write(path, STUDIES[0], 1, 1)
        sender = Principal(PrincipalKind.NODE, "MOD_ZZA", "ZZA")
        stored = fresh.ingestor.ingest_file(path, sender, Provenance(Channel.IMPORT))
        assert stored.outcome is Outcome.STORED, stored
        assert fresh.query.stats(SYSTEM)["studies"] == 36
    finally:
        fresh.close()
