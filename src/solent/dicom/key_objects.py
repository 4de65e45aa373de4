"""What a key object or presentation state points at (R30): a Key Object Selection Document
that is not an IOCM rejection note (a key image note such as "For Conference", IHE KIN) and
the softcopy presentation states (GSPS and its kin, IHE CPI). Ingest keeps the references, so
when a rejection note later withdraws an instance, every such object that pointed at it is
flagged to whoever stored it instead of silently showing a gap at the MDT."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from solent.dicom.rejection_note import KEY_OBJECT_SELECTION, evidence

#: Softcopy Presentation State Storage SOP classes share this root (PS3.4 B.5: grayscale,
#: color, pseudo-color, blending, XA/XRF, planar MPR, volume rendering, ...).
PRESENTATION_STATE_ROOT = "1.2.840.10008.5.1.4.1.1.11."
#: At most this many references are kept per object (a manifest of a whole study may list
#: thousands; beyond this the object is kept without the rest).
MAX_REFERENCES = 20000


@dataclass(frozen=True, slots=True)
class KeyObject:
    kind: str  # "KO" (key object selection) or "PR" (presentation state)
    title: str  # "113000 Of Interest" for a KOS, the Content Label of a presentation state
    #: (study, series, SOP Instance UID) of every instance it references.
    references: tuple[tuple[str, str, str], ...]


def is_presentation_state(sop_class: str) -> bool:
    return sop_class.startswith(PRESENTATION_STATE_ROOT)


def key_object(ds: Dataset, sop_class: str) -> KeyObject | None:
    """The references of a key object selection or presentation state, else None. Call it
    only for objects that are not rejection notes."""
    if sop_class == KEY_OBJECT_SELECTION:
        titles = ds.get("ConceptNameCodeSequence") or []
        title = ""
        if titles:
            code = str(titles[0].get("CodeValue", "")).strip()
            meaning = str(titles[0].get("CodeMeaning", "")).strip()
            title = f"{code} {meaning}".strip()
        refs = evidence(ds, MAX_REFERENCES)
        return KeyObject("KO", title[:200], refs)
    if is_presentation_state(sop_class):
        own_study = str(ds.get("StudyInstanceUID", ""))
        refs_list: list[tuple[str, str, str]] = []
        _series_refs(ds, own_study, refs_list)
        for blended in ds.get("BlendingSequence") or []:
            _series_refs(blended, str(blended.get("StudyInstanceUID", "")) or own_study, refs_list)
        label = str(ds.get("ContentLabel", "") or "").strip()
        return KeyObject("PR", label[:200], tuple(refs_list[:MAX_REFERENCES]))
    return None


def _series_refs(item: Dataset, study_uid: str, out: list[tuple[str, str, str]]) -> None:
    """Referenced Series Sequence > Referenced Image Sequence (Presentation State Relationship
    module, PS3.3 C.11.11)."""
    for series in item.get("ReferencedSeriesSequence") or []:
        series_uid = str(series.get("SeriesInstanceUID", ""))
        for image in series.get("ReferencedImageSequence") or []:
            uid = str(image.get("ReferencedSOPInstanceUID", ""))
            if _uids(study_uid, series_uid, uid):
                out.append((study_uid, series_uid, uid))


def _uids(*uids: str) -> bool:
    """Every UID present and no longer than a UID may be (the index columns hold 64)."""
    return all(0 < len(u) <= 64 for u in uids)
