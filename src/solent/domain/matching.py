"""PS3.4 C.2.2.2 attribute matching, turned into a small query AST.

C-FIND and QIDO-RS both hand their keys to :func:`parse_query`; the index compiles the result
to SQL (``solent.index.query``) and ``QueryService.find`` runs it. Pure: no I/O, no SQL.

Keys are DICOM keywords (``PatientName``), 8-hex-digit tags (``00100010``), sequence paths
(``IssuerOfAccessionNumberSequence.LocalNamespaceEntityID``) or the virtual ``NHSNumber``.
Values: ``None`` or ``""`` (universal matching: return the attribute), a string as it arrives on
the wire (C-FIND backslash-separated values, QIDO comma-separated UID lists), or a list of
strings (one value each).

Patient identity (regional requirement R24): a PatientID is only meaningful with its issuer.
:func:`scope_patient_identity` decides the issuer of an unqualified PatientID from the caller's
trust, or refuses; ``QueryService.find`` always applies it, so no adapter can forget.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from enum import StrEnum

from pydicom.datadict import keyword_for_tag

from solent.domain.attributes import BY_KEYWORD, BY_TAG, IndexedAttribute, Level, Match
from solent.domain.nhs_number import NHS_ISSUER
from solent.errors import InvalidInput

#: The escape character of every LIKE pattern the AST carries.
LIKE_ESCAPE = "\\"
#: OID of the NHS number as a Universal Entity ID (IssuerOfPatientIDQualifiersSequence).
NHS_NUMBER_OID = "2.16.840.1.113883.2.1.4.1"

LEVEL_ORDER: dict[Level, int] = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}


class InformationModel(StrEnum):
    """C-FIND query/retrieve information models (QIDO-RS behaves as STUDY_ROOT)."""

    PATIENT_ROOT = "PATIENT_ROOT"
    STUDY_ROOT = "STUDY_ROOT"


class UnknownAttribute(InvalidInput):
    """One or more keys are not matchable at this level; ``keywords`` names them.

    Adapters decide: C-FIND may ignore them (return them empty), QIDO-RS may reject with 400.
    Pass ``ignore_unknown=True`` to :func:`parse_query` to collect them in ``Query.ignored``.
    """

    def __init__(self, keywords: list[str], level: Level) -> None:
        self.keywords = tuple(keywords)
        self.level = level
        super().__init__(
            f"cannot match on {', '.join(keywords)} at {level.value} level "
            "(not an indexed attribute of this level or above)"
        )


# -- matchers (one per PS3.4 C.2.2.2 rule) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Single:
    """Single value matching (C.2.2.2.1); ``value`` is upper-cased when case-insensitive."""

    value: str


@dataclass(frozen=True, slots=True)
class ValueList:
    """List of UID matching (C.2.2.2.2) and multiple single values: any one matches."""

    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Wildcard:
    """Wildcard matching (C.2.2.2.4): ``like`` is the SQL LIKE pattern, escaped with LIKE_ESCAPE."""

    pattern: str
    like: str


@dataclass(frozen=True, slots=True)
class Range:
    """Range matching (C.2.2.2.5) on DA/TM: normalised bounds, either may be open (None).

    Dates are ``YYYYMMDD``; times are ``HHMMSS`` (the lower bound padded with 0, the upper with
    the unit's maximum, so ``-11`` includes 11:59:59).
    """

    low: str | None
    high: str | None


@dataclass(frozen=True, slots=True)
class Fuzzy:
    """Fuzzy person-name matching (QIDO ``fuzzymatching=true``): any name component starts
    with ``value`` (upper-cased), so ``smi`` finds ``SMITH^JOHN`` and ``JONES^SMILLA``."""

    value: str


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Multiple value matching (C.2.2.2.8): a mix of the above, any one matches."""

    matchers: tuple[Single | Wildcard | Range | Fuzzy, ...]


Matcher = Single | ValueList | Wildcard | Range | Fuzzy | AnyOf


@dataclass(frozen=True, slots=True)
class Condition:
    """One matching key. ``case_insensitive`` means compare upper-cased values (PN policy)."""

    attribute: IndexedAttribute
    matcher: Matcher
    case_insensitive: bool = False

    @property
    def keyword(self) -> str:
        return self.attribute.keyword


@dataclass(frozen=True, slots=True)
class PatientIdentity:
    """PatientID qualified by its issuer (R4/R24): never matched on the local ID alone.

    ``issuers`` is None until :func:`scope_patient_identity` fills it (from the query or the
    caller's trust). The issuer ``NHS`` means the PatientID is an NHS number: it matches records
    whose NHS number is verified (NSTS01) at any trust, and the caller's own trust's records
    (``Query.viewer_trust``). ``linked`` also returns the records of
    other trusts that carry the same verified NHS number as a matched record (R3, query Q2).
    """

    local_id: Single | ValueList | Wildcard | AnyOf
    issuers: tuple[str, ...] | None
    linked: bool = False
    #: Set by scope_patient_identity for a PatientID sent without issuer: the caller's trust's
    #: records, and (when the trust has none with that ID) another trust's record the caller
    #: may see, as a viewer shows it on a linked study; with every record linked to them.
    unqualified: bool = False

    @property
    def by_nhs_number(self) -> bool:
        return self.issuers is not None and NHS_ISSUER in self.issuers


@dataclass(frozen=True, slots=True)
class Query:
    """What to find: the level, the matching keys, and the keys the caller asked for.

    ``conditions`` are ANDed. ``never`` is set when a key can match nothing (for example an
    OtherPatientIDsSequence item with a non-NHS issuer): the compiler returns no rows.
    ``requested`` lists every key the caller sent (matching or universal), in order;
    ``ignored`` the unknown keys dropped with ``ignore_unknown=True``.
    """

    level: Level
    conditions: tuple[Condition, ...] = ()
    identity: PatientIdentity | None = None
    requested: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    never: bool = False
    model: InformationModel | None = None
    #: Set by scope_patient_identity: the caller's trust (None: no trust) and that it ran.
    viewer_trust: str | None = None
    scoped: bool = False

    def condition(self, keyword: str) -> Condition | None:
        """The condition on ``keyword``, if the query matches on it."""
        for c in self.conditions:
            if c.keyword == keyword:
                return c
        return None

    def single_value(self, keyword: str) -> str | None:
        """The value when ``keyword`` is matched with a single value (e.g. one StudyInstanceUID)."""
        c = self.condition(keyword)
        if c is not None and isinstance(c.matcher, Single):
            return c.matcher.value
        if c is not None and isinstance(c.matcher, ValueList) and len(c.matcher.values) == 1:
            return c.matcher.values[0]
        return None


# -- keys ------------------------------------------------------------------------------------


def _virtual(
    kw: str, tag: int, vr: str, level: Level, column: str, match: Match
) -> IndexedAttribute:
    return IndexedAttribute(kw, tag, vr, level, column, match)


#: Keys that are not plain keywords of attributes.py: sequence paths and the NHS number.
ALIASES: dict[str, IndexedAttribute] = {
    "NHSNumber": _virtual("NHSNumber", 0x00100020, "LO", Level.PATIENT, "nhs_number", Match.STRING),
    "OtherPatientIDsSequence.PatientID": _virtual(
        "NHSNumber", 0x00100020, "LO", Level.PATIENT, "nhs_number", Match.STRING
    ),
    "IssuerOfAccessionNumberSequence.LocalNamespaceEntityID": _virtual(
        "IssuerOfAccessionNumber", 0x00400031, "UT", Level.STUDY, "accession_issuer", Match.STRING
    ),
    "IssuerOfAccessionNumberSequence.UniversalEntityID": _virtual(
        "IssuerOfAccessionNumber", 0x00400032, "UT", Level.STUDY, "accession_issuer", Match.STRING
    ),
    "IssuerOfAccessionNumber": _virtual(
        "IssuerOfAccessionNumber", 0x00400031, "UT", Level.STUDY, "accession_issuer", Match.STRING
    ),
}

#: Sequence item keys that only constrain what the item means, checked against constants.
_ITEM_CONSTANTS: dict[str, str] = {
    "OtherPatientIDsSequence.IssuerOfPatientID": NHS_ISSUER,
    "OtherPatientIDsSequence.TypeOfPatientID": "TEXT",
    "IssuerOfPatientIDQualifiersSequence.UniversalEntityIDType": "ISO",
}

#: Computed columns: returned in every row, but only universal matching is supported.
_RETURN_ONLY = frozenset(
    {
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    }
)

_TAG_KEY = re.compile(r"^[0-9A-Fa-f]{8}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE = r"\d{8}|\d{4}-\d{2}-\d{2}|\d{4}\.\d{2}\.\d{2}"
_DATE_RANGE = re.compile(rf"^(?P<low>{_DATE})?(?P<dash>-)?(?P<high>{_DATE})?$")
_TIME = r"\d{2}(?::?\d{2}(?::?\d{2}(?:\.\d{1,6})?)?)?"
_TIME_RANGE = re.compile(rf"^(?P<low>{_TIME})?(?P<dash>-)?(?P<high>{_TIME})?$")


def keyword_path(key: str) -> str:
    """``00101002.00100020`` -> ``OtherPatientIDsSequence.PatientID`` (QIDO-RS attribute paths
    may use tags); keywords pass through unchanged."""
    parts = key.split(".")
    if not all(_TAG_KEY.match(p) for p in parts):
        return key
    names = [keyword_for_tag(int(p, 16)) or p for p in parts]
    return ".".join(names)


def resolve_key(key: str) -> IndexedAttribute | None:
    """The indexed attribute a key names (keyword, tag, sequence path or alias), or None."""
    key = keyword_path(key)
    if key in ALIASES:
        return ALIASES[key]
    if _TAG_KEY.match(key):
        return BY_TAG.get(int(key, 16))
    return BY_KEYWORD.get(key)


# -- value parsing ---------------------------------------------------------------------------


PN_COMPONENTS = 5  # family^given^middle^prefix^suffix (PS3.5 6.2)


def person_name_forms(value: str) -> tuple[str, ...] | None:
    """The stored forms a person name query value equals under PS3.5 6.2, or None when the
    value names component groups itself (contains ``=``) and is compared as it is.

    Trailing empty components are insignificant (``SMITH^JOHN`` is ``SMITH^JOHN^^^``, which
    many modalities send), so the value with its trailing carets dropped and then with 0 to 4
    of them. Each form also matches a stored name that adds ideographic or phonetic groups
    after ``=`` (``WANG^XIAODONG=王^小東``): the caller compares ``form`` and ``form=...``."""
    if "=" in value:
        return None
    base = value.rstrip("^")
    free = PN_COMPONENTS - 1 - base.count("^")
    return tuple(base + "^" * n for n in range(max(free, 0) + 1))


def like_pattern(value: str) -> str:
    """DICOM wildcard -> SQL LIKE (``*`` -> ``%``, ``?`` -> ``_``); ``%``, ``_``, escape escaped."""
    out = []
    for ch in value:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in ("%", "_", LIKE_ESCAPE):
            out.append(LIKE_ESCAPE + ch)
        else:
            out.append(ch)
    return "".join(out)


def _values(raw: str | list[str], attr: IndexedAttribute) -> list[str]:
    if isinstance(raw, list):
        parts = [str(v) for v in raw]
    elif attr.match is Match.UID:
        parts = re.split(r"[\\,]", raw)
    else:
        parts = raw.split("\\")
    return [p.strip() for p in parts if p.strip()]


def _date(value: str, key: str) -> str:
    digits = value.replace("-", "").replace(".", "")
    try:
        date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        raise InvalidInput(f"{key}: {value!r} is not a valid date (YYYYMMDD)") from None
    return digits


def _time(value: str, key: str, *, upper: bool) -> str:
    digits = value.replace(":", "").split(".", 1)[0]
    hh, mm, ss = digits[:2], digits[2:4], digits[4:6]
    fill = "59" if upper else "00"
    mm, ss = mm or fill, ss or fill
    if int(hh) > 23 or int(mm) > 59 or int(ss) > 60:
        raise InvalidInput(f"{key}: {value!r} is not a valid time (HHMMSS)")
    return hh + mm + ss


def _range_or_single(value: str, attr: IndexedAttribute, key: str) -> Single | Range:
    if attr.match is Match.DATE:
        m = _DATE_RANGE.match(value)
        if not m or not (m["low"] or m["high"]):
            raise InvalidInput(
                f"{key}: {value!r} is not a date or date range (YYYYMMDD, A-B, -B or A-)"
            )
        low = _date(m["low"], key) if m["low"] else None
        high = _date(m["high"], key) if m["high"] else None
        if not m["dash"]:
            return Single(low or "")
    else:
        m = _TIME_RANGE.match(value)
        if not m or not (m["low"] or m["high"]):
            raise InvalidInput(
                f"{key}: {value!r} is not a time or time range (HHMMSS, A-B, -B, A-)"
            )
        if not m["dash"]:
            t = m["low"]
            return Range(_time(t, key, upper=False), _time(t, key, upper=True))
        low = _time(m["low"], key, upper=False) if m["low"] else None
        high = _time(m["high"], key, upper=True) if m["high"] else None
    if low and high and low > high:
        raise InvalidInput(f"{key}: range {value!r} ends before it starts")
    return Range(low, high)


def _one(
    value: str, attr: IndexedAttribute, key: str, *, fuzzy: bool, upper: bool
) -> Single | Wildcard | Range | Fuzzy:
    m = attr.match
    if m in (Match.DATE, Match.TIME):
        return _range_or_single(value, attr, key)
    if m is Match.UID:
        if not _UID.match(value) or len(value) > 64:
            raise InvalidInput(f"{key}: {value!r} is not a valid UID")
        return Single(value)
    if m is Match.INT:
        try:
            return Single(str(int(value)))
        except ValueError:
            raise InvalidInput(f"{key}: {value!r} is not an integer") from None
    if upper:
        value = value.upper()
    if fuzzy and m is Match.PN:
        return Fuzzy(value.replace("*", "").replace("?", ""))
    if "*" in value or "?" in value:
        return Wildcard(value, like_pattern(value))
    return Single(value)


def parse_matcher(
    attr: IndexedAttribute,
    raw: str | list[str],
    *,
    key: str | None = None,
    fuzzy: bool = False,
    upper: bool = False,
) -> Matcher | None:
    """The matcher for one key's value, or None for universal matching (empty or ``*``)."""
    key = key or attr.keyword
    values = _values(raw, attr)
    if not values or any(v == "*" for v in values):
        return None
    if attr.keyword in _RETURN_ONLY:
        raise InvalidInput(f"{key}: only universal matching is supported on computed counts")
    parsed = [_one(v, attr, key, fuzzy=fuzzy, upper=upper) for v in values]
    if len(parsed) == 1:
        return parsed[0]
    if all(isinstance(p, Single) for p in parsed):
        return ValueList(tuple(p.value for p in parsed if isinstance(p, Single)))
    return AnyOf(tuple(parsed))


def _matches_constant(matcher: Matcher, constant: str) -> bool:
    """Evaluate a matcher against a fixed value (sequence item keys with one possible value)."""
    if isinstance(matcher, Single):
        return matcher.value.upper() == constant.upper()
    if isinstance(matcher, ValueList):
        return constant.upper() in (v.upper() for v in matcher.values)
    if isinstance(matcher, Wildcard):
        rx = "".join(
            ".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in matcher.pattern
        )
        return re.fullmatch(rx, constant, re.IGNORECASE) is not None
    if isinstance(matcher, AnyOf):
        return any(_matches_constant(m, constant) for m in matcher.matchers)
    return False


# -- the entry point -------------------------------------------------------------------------


@dataclass
class _Builder:
    level: Level
    conditions: list[Condition] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    never: bool = False


def parse_query(
    level: Level,
    keys: Mapping[str, str | list[str] | None],
    *,
    fuzzy_names: bool = False,
    pn_case_insensitive: bool = True,
    ignore_unknown: bool = False,
    linked: bool = False,
    model: InformationModel | None = None,
) -> Query:
    """Parse C-FIND identifier / QIDO-RS query keys at ``level`` into a :class:`Query`.

    Keys may belong to ``level`` or any level above it (a SERIES query may match PatientID,
    StudyDate...). Raises :class:`UnknownAttribute` (an ``InvalidInput``) for keys that are not
    indexed at or above ``level`` unless ``ignore_unknown``; ``InvalidInput`` with a readable
    message for malformed values (bad date, range ending before it starts, bad UID, non-integer).

    - ``fuzzy_names``: PN keys match any name component by prefix (QIDO ``fuzzymatching``).
    - ``pn_case_insensitive``: PN keys compare upper-cased (policy; PS3.4 allows either).
    - ``linked``: a PatientID+issuer query also returns the other trusts' records that share a
      verified NHS number with the matched record (R3; QIDO Q2 of the requirements).
    - ``model``: C-FIND information model; STUDY_ROOT has no PATIENT level. Keys of the levels
      above may use any matching rule in both models (relational search is accepted: refusing a
      wildcard PatientID at STUDY level would only break SCUs that send one).
    """
    if model is InformationModel.STUDY_ROOT and level is Level.PATIENT:
        raise InvalidInput("the Study Root information model has no PATIENT level")
    b = _Builder(level)
    patient_id: Matcher | None = None
    issuer_raw: str | list[str] | None = None
    issuer_given = False
    for wire_key, raw in keys.items():
        b.requested.append(wire_key)
        key = keyword_path(wire_key)
        if key in _ITEM_CONSTANTS:
            matcher = (
                parse_matcher(BY_KEYWORD["PatientSex"], raw, key=key, upper=True) if raw else None
            )
            if matcher is not None and not _matches_constant(matcher, _ITEM_CONSTANTS[key]):
                b.never = True
            continue
        if key in ("IssuerOfPatientIDQualifiersSequence.UniversalEntityID",):
            if raw and _values(raw, BY_KEYWORD["SOPClassUID"]) not in ([], [NHS_NUMBER_OID]):
                raise InvalidInput(
                    f"{key}: only the NHS number OID {NHS_NUMBER_OID} is known; "
                    "name the trust with IssuerOfPatientID"
                )
            if raw:
                issuer_raw, issuer_given = NHS_ISSUER, True
            continue
        attr = resolve_key(key)
        if attr is None or LEVEL_ORDER[attr.level] > LEVEL_ORDER[level]:
            b.unknown.append(key)
            continue
        if raw is None:
            continue
        if attr.keyword == "IssuerOfPatientID":
            issuer_raw, issuer_given = raw, bool(_values(raw, attr))
            continue
        upper = attr.match is Match.PN and (pn_case_insensitive or fuzzy_names)
        matcher = parse_matcher(attr, raw, key=key, fuzzy=fuzzy_names, upper=upper)
        if matcher is None:
            continue
        if attr.keyword == "PatientID":
            patient_id = matcher
            continue
        b.conditions.append(Condition(attr, matcher, case_insensitive=upper))

    if b.unknown and not ignore_unknown:
        raise UnknownAttribute(b.unknown, level)

    identity: PatientIdentity | None = None
    issuers = _issuers(issuer_raw) if issuer_given and issuer_raw is not None else None
    if patient_id is not None:
        if isinstance(patient_id, Range | Fuzzy):
            raise InvalidInput("PatientID: ranges are not allowed")
        identity = PatientIdentity(patient_id, issuers, linked=linked)
    elif issuers is not None:
        # IssuerOfPatientID alone: every patient record of those trusts.
        b.conditions.append(
            Condition(BY_KEYWORD["IssuerOfPatientID"], ValueList(issuers), case_insensitive=False)
        )
    return Query(
        level=level,
        conditions=tuple(b.conditions),
        identity=identity,
        requested=tuple(b.requested),
        ignored=tuple(b.unknown),
        never=b.never,
        model=model,
    )


def _issuers(raw: str | list[str]) -> tuple[str, ...]:
    values = _values(raw, BY_KEYWORD["IssuerOfPatientID"])
    if any("*" in v or "?" in v for v in values):
        raise InvalidInput(
            "IssuerOfPatientID: wildcards are not allowed; name the issuing trust (R24)"
        )
    return tuple(NHS_ISSUER if v.upper() == NHS_ISSUER else v.upper() for v in values)


# -- patient identity (R24) ------------------------------------------------------------------


def scope_patient_identity(query: Query, caller_trust: str | None) -> Query:
    """Apply R24: an unqualified PatientID names the caller's trust's records (and, failing
    that, another trust's ID the caller's view printed) and the records linked to them, so a
    viewer's "other studies of this patient" finds the person's whole history.

    A caller without a trust (an administrator, the system) must name the issuer: raises
    ``InvalidInput``. Idempotent; ``QueryService.find`` calls it on every query.
    """
    ident = query.identity
    if ident is None:
        return replace(query, viewer_trust=caller_trust, scoped=True)
    issuers = ident.issuers
    if issuers is None:
        if not caller_trust:
            raise InvalidInput(
                "PatientID without IssuerOfPatientID is ambiguous across trusts (R24): add "
                "IssuerOfPatientID (the trust code, or NHS for an NHS number)"
            )
        return replace(
            query,
            identity=replace(ident, issuers=(caller_trust,), linked=True, unqualified=True),
            viewer_trust=caller_trust,
            scoped=True,
        )
    return replace(
        query,
        identity=replace(ident, issuers=issuers),
        viewer_trust=caller_trust,
        scoped=True,
    )
