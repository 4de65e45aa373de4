"""The attributes the index keeps per level, shared by the schema, C-FIND and QIDO-RS.

One table, so that a key added for QIDO is also matchable in C-FIND and indexed at ingest.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Level(StrEnum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


class Match(StrEnum):
    """How a query value is matched (PS3.4 C.2.2.2)."""

    STRING = "string"  # single value, wildcard, universal
    PN = "pn"  # as STRING, case-insensitive by policy
    UID = "uid"  # single value or list of UIDs
    DATE = "date"  # single value or range
    TIME = "time"
    INT = "int"
    MULTI = "multi"  # multi-valued (ModalitiesInStudy): matches when any value matches


@dataclass(frozen=True, slots=True)
class IndexedAttribute:
    keyword: str
    tag: int
    vr: str
    level: Level
    column: str
    match: Match


def _a(kw: str, tag: int, vr: str, level: Level, column: str, match: Match) -> IndexedAttribute:
    return IndexedAttribute(kw, tag, vr, level, column, match)


P, ST, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE

ATTRIBUTES: tuple[IndexedAttribute, ...] = (
    _a("PatientID", 0x00100020, "LO", P, "local_id", Match.STRING),
    _a("IssuerOfPatientID", 0x00100021, "LO", P, "issuer", Match.STRING),
    _a("PatientName", 0x00100010, "PN", P, "name", Match.PN),
    _a("PatientBirthDate", 0x00100030, "DA", P, "birth_date", Match.DATE),
    _a("PatientSex", 0x00100040, "CS", P, "sex", Match.STRING),
    _a("StudyInstanceUID", 0x0020000D, "UI", ST, "study_uid", Match.UID),
    _a("StudyDate", 0x00080020, "DA", ST, "study_date", Match.DATE),
    _a("StudyTime", 0x00080030, "TM", ST, "study_time", Match.TIME),
    _a("AccessionNumber", 0x00080050, "SH", ST, "accession_number", Match.STRING),
    _a("StudyID", 0x00200010, "SH", ST, "study_id", Match.STRING),
    _a("StudyDescription", 0x00081030, "LO", ST, "study_description", Match.STRING),
    _a("ReferringPhysicianName", 0x00080090, "PN", ST, "referring_physician", Match.PN),
    _a("ModalitiesInStudy", 0x00080061, "CS", ST, "modalities", Match.MULTI),
    _a("NumberOfStudyRelatedSeries", 0x00201206, "IS", ST, "num_series", Match.INT),
    _a("NumberOfStudyRelatedInstances", 0x00201208, "IS", ST, "num_instances", Match.INT),
    _a("SeriesInstanceUID", 0x0020000E, "UI", SE, "series_uid", Match.UID),
    _a("Modality", 0x00080060, "CS", SE, "modality", Match.STRING),
    _a("SeriesNumber", 0x00200011, "IS", SE, "series_number", Match.INT),
    _a("SeriesDescription", 0x0008103E, "LO", SE, "series_description", Match.STRING),
    _a("BodyPartExamined", 0x00180015, "CS", SE, "body_part", Match.STRING),
    _a("SeriesDate", 0x00080021, "DA", SE, "series_date", Match.DATE),
    _a("SeriesTime", 0x00080031, "TM", SE, "series_time", Match.TIME),
    _a("NumberOfSeriesRelatedInstances", 0x00201209, "IS", SE, "num_instances", Match.INT),
    _a("SOPInstanceUID", 0x00080018, "UI", IM, "sop_instance_uid", Match.UID),
    _a("SOPClassUID", 0x00080016, "UI", IM, "sop_class_uid", Match.UID),
    _a("InstanceNumber", 0x00200013, "IS", IM, "instance_number", Match.INT),
    _a("Rows", 0x00280010, "US", IM, "rows", Match.INT),
    _a("Columns", 0x00280011, "US", IM, "columns", Match.INT),
    _a("NumberOfFrames", 0x00280008, "IS", IM, "number_of_frames", Match.INT),
    _a("AvailableTransferSyntaxUID", 0x00083002, "UI", IM, "transfer_syntax_uid", Match.UID),
    # --- query engine (issue 3/4): keys C-FIND and QIDO-RS callers commonly send -------------
    _a("TransferSyntaxUID", 0x00020010, "UI", IM, "transfer_syntax_uid", Match.UID),
    _a("OtherPatientIDs", 0x00101000, "LO", P, "nhs_number", Match.STRING),
    # Computed per patient from its studies; returned, matchable only with universal matching.
    _a("NumberOfPatientRelatedStudies", 0x00201200, "IS", P, "num_studies", Match.INT),
    _a("NumberOfPatientRelatedSeries", 0x00201202, "IS", P, "num_series", Match.INT),
    _a("NumberOfPatientRelatedInstances", 0x00201204, "IS", P, "num_instances", Match.INT),
    # --- end query engine block ----------------------------------------------------------------
)

BY_KEYWORD: dict[str, IndexedAttribute] = {a.keyword: a for a in ATTRIBUTES}
BY_TAG: dict[int, IndexedAttribute] = {a.tag: a for a in ATTRIBUTES}


def at_level(level: Level) -> list[IndexedAttribute]:
    return [a for a in ATTRIBUTES if a.level is level]
