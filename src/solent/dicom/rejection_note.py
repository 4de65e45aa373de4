"""IOCM rejection notes (IHE IOCM, R56): a Key Object Selection Document whose title says why
the instances it lists are withdrawn. The modality or a PACS user sends one; the archive then
hides those instances from every query and retrieve, and keeps them (services/ingest side:
``solent.index.rejection``)."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"

#: Document titles (scheme DCM) of a rejection note, PS3.16 CID 7011.
REJECTION_TITLES = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}


@dataclass(frozen=True, slots=True)
class RejectionNote:
    code: str  # one of REJECTION_TITLES
    meaning: str
    #: (study, series, SOP Instance UID) of every instance the note lists.
    references: tuple[tuple[str, str, str], ...]


def rejection_note(ds: Dataset) -> RejectionNote | None:
    """The rejection a KOS carries, or None for any other object (or an ordinary KOS: key
    images). Reads Current Requested Procedure Evidence Sequence, where IOCM lists them."""
    if str(ds.get("SOPClassUID", "")) != KEY_OBJECT_SELECTION:
        return None
    titles = ds.get("ConceptNameCodeSequence") or []
    if not titles:
        return None
    title = titles[0]
    code = str(title.get("CodeValue", "")).strip()
    scheme = str(title.get("CodingSchemeDesignator", "")).strip()
    if scheme != "DCM" or code not in REJECTION_TITLES:
        return None
    return RejectionNote(code, REJECTION_TITLES[code], evidence(ds))


def evidence(ds: Dataset, limit: int | None = None) -> tuple[tuple[str, str, str], ...]:
    """(study, series, SOP Instance UID) of each instance a KOS's Current Requested Procedure
    Evidence Sequence lists (PS3.3 C.17.2), at most ``limit``; a reference with a UID missing
    or longer than a UID may be (64) is left out: it can name no stored instance."""
    refs: list[tuple[str, str, str]] = []
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence") or []:
        study_uid = str(study.get("StudyInstanceUID", ""))
        for series in study.get("ReferencedSeriesSequence") or []:
            series_uid = str(series.get("SeriesInstanceUID", ""))
            for sop in series.get("ReferencedSOPSequence") or []:
                uid = str(sop.get("ReferencedSOPInstanceUID", ""))
                if limit is not None and len(refs) >= limit:
                    return tuple(refs)
                if all(0 < len(u) <= 64 for u in (study_uid, series_uid, uid)):
                    refs.append((study_uid, series_uid, uid))
    return tuple(refs)
