"""Outgoing DICOM says who the patient is now; the values as received go to Original Attributes.

Instances are stored as received. On the way out (WADO-RS, C-GET/C-MOVE, metadata, C-FIND)
the adapters call ``apply_identity`` (pydicom Dataset) or ``apply_identity_json`` (DICOM JSON)
with ``IdentityService.current_patient_attributes(study_uid)``. Only attributes whose value
differs are replaced, and their original values are recorded once in Original Attributes
Sequence (0400,0561) with reason CORRECT, so the original identity stays retrievable.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from solent.dicom import iso2022
from solent.dicom.metadata_json import person_name_json

MODIFYING_SYSTEM = "SOLENT"


def _as_dataset(item: Mapping[str, Any]) -> Dataset:
    ds = Dataset()
    for keyword, value in item.items():
        if isinstance(value, list):
            setattr(ds, keyword, Sequence([_as_dataset(v) for v in value]))
        else:
            setattr(ds, keyword, value)
    return ds


def _plain(value: Any) -> Any:
    """A comparable form of a pydicom value (sequences as lists of dicts).

    Text as the index holds it (``parse._text``): without ISO 2022 escape sequences, which
    pydicom leaves in text decoded from ISO 2022 IR 58. Compared with them, the record's
    name never matched a GB 2312 name, so every retrieve "corrected" it, and pydicom writes
    IR 58 text without its escape sequences: the name went out as mojibake.
    """
    if isinstance(value, Sequence):
        return [{e.keyword: _plain(e.value) for e in item} for item in value]
    if value is None:
        return ""
    return iso2022.strip(str(value))


def modification_stamp(when: datetime | None = None) -> str:
    """A DT value (UTC, to the second) for Attribute Modification DateTime."""
    when = when or datetime.now(UTC)
    if when.tzinfo is None:  # SQLite hands back naive datetimes; the index stores UTC
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def apply_identity(
    dataset: Dataset,
    attributes: Mapping[str, Any],
    *,
    reason: str = "CORRECT",
    modified_at: str | None = None,
) -> bool:
    """Overwrite the patient attributes of ``dataset`` in place; True when anything changed.

    ``attributes`` maps DICOM keywords to values (str, or list of item dicts for sequences);
    None removes the attribute. Replaced or removed originals are kept in a new item of
    Original Attributes Sequence, stamped ``modified_at`` (a DT; now when not given: give
    the time of the record's change so the same retrieve gives the same bytes).
    """
    originals = Dataset()
    changed = False
    for keyword, value in attributes.items():
        present = keyword in dataset
        if value is None:
            if present:
                originals[keyword] = copy.deepcopy(dataset[keyword])
                del dataset[keyword]
                changed = True
            continue
        new_plain = value if isinstance(value, list) else str(value)
        if present and _plain(dataset[keyword].value) == _plain_expected(new_plain):
            continue
        if (
            present
            and keyword in ID_SEQUENCES
            and _ids_include(_plain(dataset[keyword].value), value)
        ):
            continue
        if present:
            originals[keyword] = copy.deepcopy(dataset[keyword])
            del dataset[keyword]  # a new element: the dictionary VR, whatever was received
        elif value in ("", []):
            continue
        if isinstance(value, list):
            setattr(dataset, keyword, Sequence([_as_dataset(v) for v in value]))
        else:
            setattr(dataset, keyword, value)
        changed = True
    if changed and len(originals):
        item = Dataset()
        item.ModifiedAttributesSequence = Sequence([originals])
        item.AttributeModificationDateTime = modified_at or modification_stamp()
        item.ModifyingSystem = MODIFYING_SYSTEM
        item.ReasonForTheAttributeModification = reason
        existing = list(dataset.get("OriginalAttributesSequence", []))
        dataset.OriginalAttributesSequence = Sequence([*existing, item])
    return changed


#: Sequences of identifiers, compared as sets of (PatientID, IssuerOfPatientID) pairs: an
#: instance that already lists the record's NHS number says what the record says, whether or
#: not its sender added TypeOfPatientID and the issuer qualifiers. Patching it anyway would
#: send nearly every instance as "corrected" (Original Attributes) when nothing changed.
ID_SEQUENCES = frozenset({"OtherPatientIDsSequence"})


def _id_pairs(items: Any) -> set[tuple[str, str]]:
    if not isinstance(items, list):
        return set()
    return {
        (str(item.get("PatientID") or ""), str(item.get("IssuerOfPatientID") or ""))
        for item in items
        if isinstance(item, Mapping)
    }


def _ids_include(present: Any, wanted: Any) -> bool:
    """Every identifier of ``wanted`` (the record's items) is among ``present``'s."""
    want = _id_pairs(wanted)
    return bool(want) and want <= _id_pairs(present)


def _json_ids(element: Mapping[str, Any]) -> list[dict[str, str]]:
    """A DICOM JSON identifier sequence as keyword items, for ``_ids_include``."""
    pid, issuer = _tag("PatientID"), _tag("IssuerOfPatientID")
    out = []
    for item in element.get("Value") or []:
        if not isinstance(item, Mapping):
            continue
        values = [(item.get(t) or {}).get("Value") or [""] for t in (pid, issuer)]
        out.append({"PatientID": str(values[0][0]), "IssuerOfPatientID": str(values[1][0])})
    return out


def _plain_expected(value: Any) -> Any:
    if isinstance(value, list):
        return [{k: _plain_expected(v) for k, v in item.items()} for item in value]
    return str(value)


# -- DICOM JSON (PS3.18 F.2), for WADO-RS/QIDO-RS metadata ------------------------------------


def _tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"unknown DICOM keyword {keyword}")
    return f"{tag:08X}"


def _json_element(keyword: str, value: Any) -> dict[str, Any]:
    vr = dictionary_VR(_tag(keyword))
    if isinstance(value, list):
        return {"vr": "SQ", "Value": [_json_item(v) for v in value]}
    if value == "":
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [person_name_json(value)]}
    return {"vr": vr, "Value": [value]}


def _json_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {_tag(k): _json_element(k, v) for k, v in item.items()}


def apply_identity_json(
    obj: dict[str, Any],
    attributes: Mapping[str, Any],
    *,
    reason: str = "CORRECT",
    modified_at: str | None = None,
) -> bool:
    """The same as ``apply_identity`` on one DICOM JSON object (modified in place)."""
    originals: dict[str, Any] = {}
    changed = False
    for keyword, value in attributes.items():
        tag = _tag(keyword)
        present = tag in obj
        if value is None:
            if present:
                originals[tag] = obj.pop(tag)
                changed = True
            continue
        new = _json_element(keyword, value)
        if present and obj[tag].get("Value") == new.get("Value"):
            continue
        if present and keyword in ID_SEQUENCES and _ids_include(_json_ids(obj[tag]), value):
            continue
        if not present and value in ("", []):
            continue
        if present:
            originals[tag] = copy.deepcopy(obj[tag])
        obj[tag] = new
        changed = True
    if changed and originals:
        item = {
            _tag("ModifiedAttributesSequence"): {"vr": "SQ", "Value": [originals]},
            _tag("AttributeModificationDateTime"): {
                "vr": "DT",
                "Value": [modified_at or modification_stamp()],
            },
            _tag("ModifyingSystem"): {"vr": "LO", "Value": [MODIFYING_SYSTEM]},
            _tag("ReasonForTheAttributeModification"): {"vr": "CS", "Value": [reason]},
        }
        seq_tag = _tag("OriginalAttributesSequence")
        existing = obj.get(seq_tag, {}).get("Value", [])
        obj[seq_tag] = {"vr": "SQ", "Value": [*existing, item]}
    return changed
