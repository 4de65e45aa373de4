"""The DICOM JSON of an ingested instance (WADO-RS metadata), built once at ingest.

Bulk data is replaced by BulkDataURIs; top-level elements are converted through a cache keyed
by their raw encoding (below), so a series' repeated header costs one conversion per series.
"""

from __future__ import annotations

import json
import warnings
import zlib
from collections.abc import Mapping
from typing import Any

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import ENCODED_VR
from pydicom.tag import BaseTag

from solent.dicom import iso2022

BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
BULK_THRESHOLD = 1024


def _bulk_paths(ds: Dataset, prefix: str = "") -> dict[int, str]:
    """Map each large binary element (by identity) to its path, for BulkDataURI values."""
    paths: dict[int, str] = {}
    for elem in ds:
        tag = f"{elem.tag:08X}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                paths.update(_bulk_paths(item, f"{prefix}{tag}/{i}/"))
        elif elem.VR in BULK_VRS:
            paths[id(elem)] = prefix + tag
    return paths


# The DICOM JSON text of top-level elements, by their raw encoding. Most of a series' header
# (patient, study, series, equipment, acquisition modules) is byte-identical from one slice
# to the next, and turning an element into JSON through pydicom (convert, to_json_dict,
# json.dumps) was a third of ingest's Python time per instance; the same bytes in the same
# context give the same JSON, so it is done once per distinct element. Only elements whose
# text depends on nothing but these bytes are kept: public tags with one dictionary VR (no
# "US or SS", resolved from other elements), no sequences (nested VRs and character sets
# come from their parents), short values, and no conversion warning (those are reported per
# file, so a file must meet them itself). Access is under parse._PARSE_LOCK. Keys hold the tag
# as a plain int: comparing two pydicom BaseTags is a Python-level __eq__ call per look-up.
#
# A public sequence (defined length, so its bytes are at hand) is cached too, with what else its
# conversion reads: its items take the parent's character set (in the key) and, for "US or SS"
# elements, the dataset's Pixel Representation (pydicom's Dataset._set_pixel_representation;
# its raw encoding is in the key). Everything else an item's JSON depends on (its own character
# set, private creators, Bits Allocated, LUT descriptors) is inside the sequence's own bytes.
_JSON_CACHE: dict[tuple[Any, ...], str] = {}
_JSON_CACHE_MAX = 4096
_JSON_CACHE_VALUE_MAX = 1024
_SEQUENCE_VALUE_MAX = 4096
PIXEL_REPRESENTATION = 0x00280103
# A private element whose VR is written in the file (explicit VR, anything but UN and SQ) is
# converted by that VR and the character set alone (pydicom's raw_element_vr consults the
# private creator only for a missing or UN VR), so its text is cached too: real modalities'
# headers are up to half private elements, identical from slice to slice.
_PRIVATE_VRS = frozenset({vr.decode() for vr in ENCODED_VR if len(vr) == 2} - {"UN", "SQ"})


def _cacheable_tag(tag: int) -> bool:
    """Whether an element's JSON depends on its bytes only (see above); memoised per tag
    (a pure function of the data dictionary, asked ~70 times per instance)."""
    key = int(tag)
    known = _CACHEABLE.get(key)
    if known is None:
        known = _CACHEABLE[key] = _cacheable_vr(key)
    return known


_CACHEABLE: dict[int, bool] = {}
_SEQUENCES: dict[int, bool] = {}


def cacheable_sequence(tag: int) -> bool:
    """Whether ``tag`` is a public sequence (one dictionary VR, SQ); memoised per tag."""
    key = int(tag)
    known = _SEQUENCES.get(key)
    if known is None:
        try:
            vr = pydicom.datadict.dictionary_VR(key)
        except KeyError:
            vr = ""
        known = _SEQUENCES[key] = not key >> 16 & 1 and vr == "SQ"
    return known


def raw_context(r: Any) -> tuple[Any, ...] | None:
    """The raw encoding of an element as read (the key of what depends on it)."""
    if r is None:
        return None
    if isinstance(r, RawDataElement):
        return (r.VR, r.value, r.is_implicit_VR, r.is_little_endian)
    return ("converted", r.VR, r.value)


def _cacheable_vr(tag: int) -> bool:
    if tag >> 16 & 1:  # private: its VR comes from its private creator
        return False
    try:
        vr = pydicom.datadict.dictionary_VR(tag)
    except KeyError:
        return False
    return " or " not in vr and vr != "SQ"


PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def person_name_json(value: str) -> dict[str, str]:
    """One Person Name value as a DICOM JSON object (PS3.18 F.2.2): ``alpha=ideo=phonetic``
    split into its component groups, as pydicom's ``to_json_dict`` writes it (Alphabetic
    always, the others when the value has them), so a name the index holds reads the same as
    the file's own."""
    return dict(zip(PN_GROUPS, value.split("=")[:3], strict=False))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def metadata_json(
    ds: Dataset,
    transfer_syntax: str,
    pixel_vr: str | None,
    pixel_tag: str | None,
    raw: Mapping[BaseTag, Any] | None = None,
    caught: list[warnings.WarningMessage] | None = None,
) -> bytes:
    """The zlib-compressed DICOM JSON of ``ds`` (bulk data as URIs), keys in tag order.

    ``raw`` is the dataset's elements as read (before parsing converted any), ``caught`` the
    list warnings are recorded to: with both, elements are looked up in _JSON_CACHE by their
    raw encoding. The text is what ``json.dumps`` of pydicom's ``to_json_dict`` gives."""
    cache = raw is not None and caught is not None
    charset = ds._character_set if cache else None
    encoding = tuple(charset) if isinstance(charset, list) else charset
    pixel_rep = raw_context(raw.get(BaseTag(PIXEL_REPRESENTATION))) if raw is not None else None
    parts: dict[str, str] = {}
    for tag in ds.keys():  # noqa: SIM118 - tags, not elements
        name = f"{tag:08X}"
        key: tuple[Any, ...] | None = None
        if cache:
            assert raw is not None and caught is not None
            r = raw.get(tag)
            if isinstance(r, RawDataElement) and r.value is not None:
                n = len(r.value)
                if n <= _JSON_CACHE_VALUE_MAX and (
                    _cacheable_tag(tag) or (tag >> 16 & 1 and r.VR in _PRIVATE_VRS)
                ):
                    key = (int(tag), r.VR, r.value, r.is_implicit_VR, r.is_little_endian, encoding)
                elif n <= _SEQUENCE_VALUE_MAX and cacheable_sequence(tag):
                    key = (int(tag), r.VR, r.value, r.is_implicit_VR, r.is_little_endian, encoding)
                    key += (pixel_rep,)
            if key is not None:
                hit = _JSON_CACHE.get(key)
                if hit is not None:
                    parts[name] = hit
                    continue
            seen = len(caught)
        elem = ds[tag]
        # Bulk data of this element is at its tag; of an item's elements, at their path.
        paths: dict[int, str] = {}
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                paths.update(_bulk_paths(item, f"{name}/{i}/"))

        def bulk(e: DataElement, paths: dict[int, str] = paths) -> str:
            return "bulkdata/" + paths.get(id(e), f"{e.tag:08X}")

        text = iso2022.strip_json(
            _dumps(
                elem.to_json_dict(
                    bulk_data_element_handler=bulk, bulk_data_threshold=BULK_THRESHOLD
                )
            )
        )
        parts[name] = text
        if key is not None and caught is not None and len(caught) == seen:
            if len(_JSON_CACHE) >= _JSON_CACHE_MAX:
                _JSON_CACHE.clear()
            _JSON_CACHE[key] = text
    parts["00083002"] = _dumps({"vr": "UI", "Value": [transfer_syntax]})
    if pixel_tag is not None:
        parts[pixel_tag] = _dumps({"vr": pixel_vr or "OB", "BulkDataURI": "bulkdata/" + pixel_tag})
    text = "{" + ",".join(f'"{k}":{v}' for k, v in sorted(parts.items())) + "}"
    return zlib.compress(text.encode("utf-8"), 6)
