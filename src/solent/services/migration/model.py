"""What migration talks about: sources, inventory entries, plans, work items, and their states.

Kept apart from the code that moves data so the importers (which talk to legacy systems) and
every part of the service share one vocabulary without importing each other.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.valuerep import PersonName

from solent.domain import nhs_number as nhs
from solent.domain.principal import Principal
from solent.errors import InvalidInput
from solent.services.access import AccessDenied, Permission, permissions_of

KINDS = ("dimse", "dicomweb", "folder")
FINAL = ("stored", "duplicate", "quarantined")
# Work-queue kinds that stop a record's studies from moving: the identity service raised them.
BLOCKING = frozenset(
    {
        "invalid-nhs-number",
        "demographic-conflict",
        "nhs-number-changed",
        "duplicate-record",
        "migration-demographics-differ",
    }
)
STUDY_ELSEWHERE = "migration-study-elsewhere"
# State of an instance the source lists more than once in one inventory (one SOP Instance UID
# under two patients, studies or files): held, never fetched, until the source holds one.
CONFLICT = "conflict"
# Left out of the migration by an operator, with a reason (the source can never deliver it).
EXCLUDED = "excluded"
# Not in the archive yet: what an operator may exclude.
OPEN_STATES = ("pending", "failed", "waiting", CONFLICT)
DIFFER = "migration-demographics-differ"


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    kind: str
    address: str
    trust: str
    nhs_traced: bool = False
    calling_ae: str = "SOLENT"
    associations: int = 2
    rate: int = 0  # instances per second, 0 = as fast as the source answers
    hours: str | None = None  # "HH:MM-HH:MM" when transfers may run (may wrap midnight)


@dataclass(frozen=True, slots=True)
class Entry:
    """One instance as the source's inventory lists it."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    patient_name: str | None = None
    birth_date: str | None = None
    sex: str | None = None
    nhs_number: str | None = None
    sop_class_uid: str | None = None
    study_date: str | None = None
    modality: str | None = None
    size_bytes: int | None = None
    locator: str | None = None


@dataclass
class InventoryDelta:
    total: int = 0
    new: int = 0
    changed: int = 0  # rows whose patient demographics changed at the source
    conflicts: int = 0  # SOP Instance UIDs the source listed more than once (held)


@dataclass
class Plan:
    """What a run would do (dry run) or did decide (reconcile), before any byte moves."""

    source: str
    move_instances: int = 0
    move_bytes: int = 0
    move_studies: int = 0
    merge_studies: list[dict[str, Any]] = field(default_factory=list)
    waiting: list[dict[str, str]] = field(default_factory=list)  # per study: why it waits
    demographics_applied: int = 0
    already_done: int = 0
    conflicts: int = 0  # instances held: the source lists their SOP Instance UID twice

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Item:
    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str | None
    patient_id: str
    locator: str | None
    size_bytes: int | None


def require(principal: Principal, permission: Permission) -> None:
    if permission not in permissions_of(principal):
        raise AccessDenied("migration needs the importer or an administrator")


def parse_hours(hours: str) -> tuple[int, int]:
    try:
        a, b = hours.split("-")
        ha, ma = (int(x) for x in a.split(":"))
        hb, mb = (int(x) for x in b.split(":"))
    except ValueError as exc:
        raise InvalidInput("--hours must look like 19:00-07:00") from exc
    if not (0 <= ha < 24 and 0 <= hb < 24 and 0 <= ma < 60 and 0 <= mb < 60):
        raise InvalidInput("--hours must look like 19:00-07:00")
    return ha * 60 + ma, hb * 60 + mb


def within_hours(hours: str | None, minute_of_day: int) -> bool:
    """Whether a transfer may run now; the window may wrap midnight (19:00-07:00)."""
    if not hours:
        return True
    start, end = parse_hours(hours)
    if start <= end:
        return start <= minute_of_day < end
    return minute_of_day >= start or minute_of_day < end


def source_of(r: Any) -> Source:
    """A migration_source row as a Source."""
    return Source(
        name=r["name"],
        kind=r["kind"],
        address=r["address"],
        trust=r["trust_code"],
        nhs_traced=bool(r["nhs_traced"]),
        calling_ae=r["calling_ae"],
        associations=int(r["associations"]),
        rate=int(r["rate"]),
        hours=r["hours"],
    )


def demographics_of(r: Any) -> dict[str, Any]:
    """An inventory row's patient demographics as the identity service compares them."""
    number = r["nhs_number"]
    return {
        "name": r["patient_name"] or None,
        "birth_date": r["birth_date"] or None,
        "sex": r["sex"] or None,
        "nhs_number": nhs.normalise(number) if number else None,
    }


def plain(v: Any) -> Any:
    return v.isoformat() if hasattr(v, "isoformat") else v


#: ISO 2022 character sets whose multi-byte letters are 7-bit codes between escape sequences
#: (JIS X 0208/0212): a legacy PACS that drops the escapes and the 8-bit bytes lists such a
#: name as ASCII punctuation ('山田^太郎' as ';3ED^B@O:'). G1 sets (GB 2312, KS X 1001) are
#: 8-bit and simply dropped, as the Latin-1 rendering already covers.
_SEVEN_BIT_ISO2022 = (
    ("ISO 2022 IR 13", "ISO 2022 IR 87"),
    ("ISO 2022 IR 6", "ISO 2022 IR 87"),
    ("ISO 2022 IR 6", "ISO 2022 IR 87", "ISO 2022 IR 159"),
)
_ESCAPE_BYTES = re.compile(rb"\x1b[\x20-\x2f]+[\x30-\x7e]")


def _iso2022_renderings(original: str) -> set[str]:
    """``original`` encoded in each 7-bit ISO 2022 set, escapes and 8-bit bytes dropped."""
    out: set[str] = set()
    if original.isascii():
        return out
    for charsets in _SEVEN_BIT_ISO2022:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                raw = PersonName(original).encode(convert_encodings(list(charsets)))
        except (UnicodeError, LookupError, ValueError):  # a name these sets cannot carry
            continue
        bare = _ESCAPE_BYTES.sub(b"", raw)
        # JIS X 0201 (IR 13) katakana are single 8-bit bytes: dropped, or kept as katakana by
        # a PACS that decodes IR 13 but not the IR 87 after it (Orthanc's DICOMweb does).
        codecs = ("ascii", "shift_jis") if "ISO 2022 IR 13" in charsets else ("ascii",)
        for codec in codecs:
            for errors in ("ignore", "replace"):
                out.add(bare.decode(codec, errors=errors))
    return out


def lossy_rendering(original: str, rendered: str) -> bool:
    """Whether ``rendered`` is ``original`` after a character set that cannot carry all of
    it: a legacy PACS answering C-FIND in Latin-1 (Orthanc's default) or ASCII drops or
    replaces the other letters (a Cyrillic name that mixes in Latin look-alikes listed as those
    alone, an Arabic name as '^'), or drops a Japanese name's escape sequences and 8-bit bytes
    and lists the 7-bit JIS codes left as ASCII ('ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎' as '^=;3ED^B@O:')."""
    if original == rendered:
        return False
    for codec in ("latin-1", "ascii"):
        for errors in ("ignore", "replace"):
            if original.encode(codec, errors=errors).decode(codec) == rendered:
                return True
    return rendered in _iso2022_renderings(original)
