"""Compile a matching ``Query`` (solent.domain.matching) to SQLAlchemy Core and run it.

One SELECT per query: the level's table joined up to patient, the conditions ANDed, a stable
order (studies newest first) and LIMIT/OFFSET pushed into SQL, so /studies at 100k studies reads
only the rows it returns through the study_date / patient(issuer, local_id) indexes.

Information models: PATIENT_ROOT and STUDY_ROOT differ only in which levels exist and how the
unique keys above the level must be given (checked by parse_query); the rows are the same.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Connection,
    FromClause,
    Select,
    and_,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    true,
    union,
)

from solent.domain.attributes import BY_KEYWORD, IndexedAttribute, Level, Match
from solent.domain.matching import (
    LIKE_ESCAPE,
    AnyOf,
    Condition,
    Fuzzy,
    Matcher,
    PatientIdentity,
    Query,
    Range,
    Single,
    ValueList,
    Wildcard,
    like_pattern,
    person_name_forms,
)
from solent.domain.nhs_number import NHS_ISSUER
from solent.index import access
from solent.index import schema as t

Expr = ColumnElement[Any]

#: Row keys per level (each level's rows also carry every key of the levels above).
ROW_KEYS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: (
        "PatientID",
        "IssuerOfPatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "NHSNumber",
        "NHSNumberVerified",
    ),
    Level.STUDY: (
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "IssuerOfAccessionNumber",
        "StudyID",
        "StudyDescription",
        "ReferringPhysicianName",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: (
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "SeriesDate",
        "SeriesTime",
        "NumberOfSeriesRelatedInstances",
    ),
    Level.IMAGE: (
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "NumberOfFrames",
        "TransferSyntaxUID",
    ),
}
PATIENT_COUNT_KEYS = (
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
)

_LEVELS = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)


@cache
def _columns(level: Level) -> tuple[Expr, ...]:
    p, s, se, i = t.patient.c, t.study.c, t.series.c, t.instance.c
    cols: dict[Level, list[Expr]] = {
        Level.PATIENT: [
            p.local_id.label("PatientID"),
            p.issuer.label("IssuerOfPatientID"),
            p.name.label("PatientName"),
            p.birth_date.label("PatientBirthDate"),
            p.sex.label("PatientSex"),
            p.nhs_number.label("NHSNumber"),
            p.nhs_number_verified.label("NHSNumberVerified"),
        ],
        Level.STUDY: [
            s.study_uid.label("StudyInstanceUID"),
            s.study_date.label("StudyDate"),
            s.study_time.label("StudyTime"),
            s.accession_number.label("AccessionNumber"),
            s.accession_issuer.label("IssuerOfAccessionNumber"),
            s.study_id.label("StudyID"),
            s.study_description.label("StudyDescription"),
            s.referring_physician.label("ReferringPhysicianName"),
            s.modalities.label("ModalitiesInStudy"),
            s.num_series.label("NumberOfStudyRelatedSeries"),
            s.num_instances.label("NumberOfStudyRelatedInstances"),
        ],
        Level.SERIES: [
            se.series_uid.label("SeriesInstanceUID"),
            se.modality.label("Modality"),
            se.series_number.label("SeriesNumber"),
            se.series_description.label("SeriesDescription"),
            se.body_part.label("BodyPartExamined"),
            se.series_date.label("SeriesDate"),
            se.series_time.label("SeriesTime"),
            se.num_instances.label("NumberOfSeriesRelatedInstances"),
        ],
        Level.IMAGE: [
            i.sop_instance_uid.label("SOPInstanceUID"),
            i.sop_class_uid.label("SOPClassUID"),
            i.instance_number.label("InstanceNumber"),
            i.rows.label("Rows"),
            i.columns.label("Columns"),
            i.number_of_frames.label("NumberOfFrames"),
            i.transfer_syntax_uid.label("TransferSyntaxUID"),
        ],
    }
    out: list[Expr] = []
    for lv in _LEVELS:
        out.extend(cols[lv])
        if lv is level:
            break
    if level is Level.PATIENT:
        s2 = t.study.alias("s_count")
        where = s2.c.patient_pk == p.pk
        out += [
            select(func.count())
            .select_from(s2)
            .where(where)
            .scalar_subquery()
            .label(PATIENT_COUNT_KEYS[0]),
            select(func.coalesce(func.sum(s2.c.num_series), 0))
            .where(where)
            .scalar_subquery()
            .label(PATIENT_COUNT_KEYS[1]),
            select(func.coalesce(func.sum(s2.c.num_instances), 0))
            .where(where)
            .scalar_subquery()
            .label(PATIENT_COUNT_KEYS[2]),
        ]
    return tuple(out)  # built once per level: SQLAlchemy elements are immutable


@cache
def _from(level: Level) -> FromClause:
    j: FromClause = t.patient
    if level is Level.PATIENT:
        return j
    j = t.study.join(t.patient, t.study.c.patient_pk == t.patient.c.pk)
    if level is Level.STUDY:
        return j
    j = t.series.join(j, t.series.c.study_pk == t.study.c.pk)
    if level is Level.SERIES:
        return j
    return t.instance.join(j, t.instance.c.series_pk == t.series.c.pk)


_TABLES = {
    Level.PATIENT: t.patient,
    Level.STUDY: t.study,
    Level.SERIES: t.series,
    Level.IMAGE: t.instance,
}


def _column(attr: IndexedAttribute, case_insensitive: bool) -> Expr:
    table = _TABLES[attr.level]
    if case_insensitive and attr.level is Level.PATIENT and attr.column == "name":
        upper: Expr = table.c.name_upper
        return upper
    col: Expr = table.c[attr.column]
    if case_insensitive:
        return func.upper(col)
    if attr.match is Match.TIME:
        # Compare at second resolution whatever precision was stored ("1015" -> "101500").
        return func.substr(func.replace(col, ":", "").concat("000000"), 1, 6)
    return col


def _value(attr: IndexedAttribute, v: str) -> Any:
    return int(v) if attr.match is Match.INT else v


def glob_pattern(dicom_pattern: str) -> str:
    """DICOM wildcard -> SQLite GLOB (case-sensitive, unlike SQLite's LIKE): ``[`` escaped."""
    return dicom_pattern.replace("[", "[[]")


class _Compiler:
    """Matchers -> SQL for one dialect (SQLite's LIKE ignores case; GLOB does not)."""

    def __init__(self, dialect: str) -> None:
        self.sqlite = dialect == "sqlite"

    def match(self, col: Expr, attr: IndexedAttribute, m: Matcher) -> Expr:
        if attr.match is Match.PN and isinstance(m, Single | ValueList | Wildcard):
            person = self._person_name(col, m)
            if person is not None:
                return person
        if isinstance(m, Single):
            equal: Expr = col == _value(attr, m.value)
            return equal
        if isinstance(m, ValueList):
            return col.in_([_value(attr, v) for v in m.values])
        if isinstance(m, Wildcard):
            return self._wildcard(col, m)
        if isinstance(m, Range):
            parts: list[Expr] = [col.is_not(None)]
            if m.low is not None:
                parts.append(col >= m.low)
            if m.high is not None:
                parts.append(col <= m.high)
            return and_(*parts)
        if isinstance(m, Fuzzy):
            v = like_pattern(m.value)  # both sides upper-cased: LIKE's case rules do not matter
            return or_(*(col.like(p, escape=LIKE_ESCAPE) for p in (f"{v}%", f"%^{v}%", f"% {v}%")))
        if isinstance(m, AnyOf):
            return or_(*(self.match(col, attr, sub) for sub in m.matchers))
        raise TypeError(f"unknown matcher {m!r}")

    def _person_name(self, col: Expr, m: Single | ValueList | Wildcard) -> Expr | None:
        """A PN value matches the stored names equal to it under PS3.5 6.2: trailing empty
        components ignored, ideographic/phonetic groups after ``=`` allowed (see
        ``person_name_forms``). Equality and prefix tests only, so the name index serves them;
        None when the value is compared as it is."""
        if isinstance(m, Wildcard):
            if m.pattern.endswith("*"):
                return None  # matches any tail already
            forms = person_name_forms(m.pattern)
            if forms is None:
                return None
            patterns = [p for f in forms for p in (f, f + "=*")]
            return or_(*(self._wildcard(col, Wildcard(p, like_pattern(p))) for p in patterns))
        values = [m.value] if isinstance(m, Single) else list(m.values)
        expanded = [person_name_forms(v) for v in values]
        if any(f is None for f in expanded):
            return None
        exact = [f for forms in expanded if forms is not None for f in forms]
        groups = [self._starts_with(col, f + "=") for f in exact]
        equal: Expr = col.in_(exact)
        return or_(equal, *groups)

    def _wildcard(self, col: Expr, m: Wildcard) -> Expr:
        if self.sqlite:
            glob: Expr = col.op("GLOB", return_type=Boolean)(glob_pattern(m.pattern))
            return glob
        like: Expr = col.like(m.like, escape=LIKE_ESCAPE)
        return like

    def _starts_with(self, col: Expr, prefix: str) -> Expr:
        """``col`` begins with the literal ``prefix`` (GLOB on SQLite, which its index serves
        as LIKE is not; LIKE elsewhere)."""
        if self.sqlite:
            escaped = "".join(f"[{ch}]" if ch in "*?[" else ch for ch in prefix)
            return col.op("GLOB", return_type=Boolean)(escaped + "*")
        return col.like(like_pattern(prefix) + "%", escape=LIKE_ESCAPE)

    def condition(self, cond: Condition, viewer_trust: str | None) -> Expr:
        attr = cond.attribute
        if attr.keyword == "ModalitiesInStudy":
            values = _plain_values(cond.matcher)
            if values is not None and not cond.case_insensitive:
                return self._in_study_modalities(values)
            # Multi-valued: matches when any series of the study matches. Its own alias of
            # series, or a SERIES-level query would correlate it away to the outer row.
            se = _MODALITY_SERIES.c
            inner = self.match(se.modality, attr, cond.matcher)
            return exists().where(se.study_pk == t.study.c.pk, inner)
        if attr.keyword == "StudyDate" and isinstance(cond.matcher, Single | Range):
            return self._study_date(cond.matcher)
        expr = self.match(_column(attr, cond.case_insensitive), attr, cond.matcher)
        if attr.column == "nhs_number":
            expr = and_(expr, _nhs_guard(t.patient, viewer_trust))
        return expr

    def _in_study_modalities(self, values: list[str]) -> Expr:
        """Exact modalities against the study's own list (kept by ingest and deletion as the
        set of its series' modalities): a filter on the study row the date-ordered index scan
        already reads, instead of a series look-up per candidate study (issue 16: at 300k
        studies that look-up was 80% of a date range + modality query)."""
        padded = literal("\\").concat(t.study.c.modalities).concat(literal("\\"))
        find = func.instr if self.sqlite else func.strpos  # case-sensitive, no LIKE escaping
        return or_(*(find(padded, f"\\{v}\\") > 0 for v in values))

    @staticmethod
    def _study_date(m: Single | Range) -> Expr:
        """StudyDate through study_date_key ('' when undated), the column the order uses."""
        key = t.study.c.study_date_key
        if isinstance(m, Single):
            equal: Expr = key == m.value
            return equal
        parts: list[Expr] = [key >= m.low] if m.low else [key > ""]
        if m.high:
            parts.append(key <= m.high)
        return and_(*parts)

    def identity(self, ident: PatientIdentity, patient: Any, viewer_trust: str | None) -> Expr:
        issuers = ident.issuers or ()
        if not issuers:
            return false()  # never reached: scope_patient_identity fills or refuses
        pid = BY_KEYWORD["PatientID"]
        parts: list[Expr] = []
        local = [i for i in issuers if i != NHS_ISSUER]
        if local:
            parts.append(
                and_(
                    patient.c.issuer.in_(local),
                    self.match(patient.c.local_id, pid, ident.local_id),
                )
            )
        if NHS_ISSUER in issuers:
            parts.append(
                and_(
                    self.match(patient.c.nhs_number, pid, ident.local_id),
                    _nhs_guard(patient, viewer_trust),
                )
            )
        return or_(*parts)

    def unqualified(self, ident: PatientIdentity, patient: Any, trust: str, visible: Any) -> Expr:
        """A PatientID without issuer: the caller's trust's records with it or, when the trust
        has none, other trusts' records with it that the caller may see (the ID a viewer
        printed on a linked study). Never a record the caller may not see."""
        pid = BY_KEYWORD["PatientID"]
        mine = self.match(patient.c.local_id, pid, ident.local_id)
        own = _OWN.c
        others: Expr = and_(
            patient.c.issuer != trust,
            mine,
            ~exists().where(own.issuer == trust, self.match(own.local_id, pid, ident.local_id)),
        )
        if visible is not None:
            seen = visible.subquery("visible_unqualified")
            others = and_(others, exists().where(seen.c.pk == patient.c.pk))
        return or_(and_(patient.c.issuer == trust, mine), others)

    def patient_where(self, query: Query, visible: Any = None) -> list[Expr]:
        """The identity rule (R24) and, when asked, the linked records of other trusts (R3)."""
        ident = query.identity
        if ident is None:
            return []
        p = t.patient
        trust = query.viewer_trust
        if ident.unqualified and trust:
            direct = self.unqualified(ident, p, trust, visible)
            condition = self.unqualified(ident, _MATCHED, trust, visible)
        else:
            direct = self.identity(ident, p, trust)
            condition = self.identity(ident, _MATCHED, trust)
        if not ident.linked:
            return [direct]
        matched = select(_MATCHED.c.pk).where(condition)
        pks = union(matched, *access.linked_pks(matched)).subquery("identity_pks")
        return [p.c.pk.in_(select(pks.c.pk))]


def _plain_values(m: Matcher) -> list[str] | None:
    """The values of an exact (list) match, or None for wildcards and other matchers."""
    if isinstance(m, Single):
        return [m.value]
    if isinstance(m, ValueList):
        return list(m.values)
    if isinstance(m, AnyOf):
        subs = [_plain_values(sub) for sub in m.matchers]
        if all(sub is not None for sub in subs):
            return [v for sub in subs if sub is not None for v in sub]
    return None


_MATCHED = t.patient.alias("p_matched")
_OWN = t.patient.alias("p_own")
_MODALITY_SERIES = t.series.alias("modality_series")


def _nhs_guard(patient: Any, viewer_trust: str | None) -> Expr:
    """An NHS number identifies a person across trusts only when verified (R3); a trust's own
    records match on their unverified numbers too."""
    verified: Expr = patient.c.nhs_number_verified == true()
    if viewer_trust:
        return or_(verified, patient.c.issuer == viewer_trust)
    return verified


def build(
    query: Query, dialect: str = "sqlite", *, visible_patients: access.VisiblePatients | None = None
) -> Select[Any]:
    """The SELECT for ``query`` (without LIMIT/OFFSET). The query must be scoped (R24).

    ``visible_patients`` is the access rule's SELECT of patient pks the caller may see.
    """
    if not query.scoped:
        raise ValueError("apply solent.domain.matching.scope_patient_identity first")
    comp = _Compiler(dialect)
    level = query.level
    stmt = select(*_columns(level)).select_from(_from(level))
    where: list[Expr] = comp.patient_where(query, visible_patients)
    where += [comp.condition(c, query.viewer_trust) for c in query.conditions]
    if visible_patients is not None:
        seen = visible_patients.subquery("visible")
        where.append(exists().where(seen.c.pk == t.patient.c.pk))
    if query.never:
        where.append(false())
    if where:
        stmt = stmt.where(*where)
    return stmt.order_by(*_order(query))


def _order(query: Query) -> list[Expr]:
    p, s, se, i = t.patient.c, t.study.c, t.series.c, t.instance.c
    if query.level is Level.PATIENT:
        return [p.issuer, p.local_id]
    if query.level is Level.STUDY:
        return [s.study_date_key.desc(), s.pk.desc()]
    if query.level is Level.SERIES:
        if query.single_value("StudyInstanceUID") is not None:
            return [se.series_number.asc().nulls_last(), se.pk]
        return [se.pk.desc()]
    if query.single_value("SeriesInstanceUID") is not None:
        return [i.instance_number.asc().nulls_last(), i.pk]
    return [i.pk.desc()]


def _row(r: Any) -> dict[str, Any]:
    d = dict(r)
    if "ModalitiesInStudy" in d:
        d["ModalitiesInStudy"] = [m for m in (d["ModalitiesInStudy"] or "").split("\\") if m]
    if "NHSNumberVerified" in d:
        d["NHSNumberVerified"] = bool(d["NHSNumberVerified"])
    for k in PATIENT_COUNT_KEYS:
        if k in d:
            d[k] = int(d[k] or 0)
    return d


def execute(
    conn: Connection,
    query: Query,
    *,
    limit: int,
    offset: int = 0,
    visible_patients: access.VisiblePatients | None = None,
) -> list[dict[str, Any]]:
    """Run ``query`` and return up to ``limit`` rows after ``offset`` as keyword dicts."""
    stmt = build(query, conn.dialect.name, visible_patients=visible_patients)
    stmt = stmt.limit(limit).offset(offset)
    return [_row(r) for r in conn.execute(stmt).mappings()]


__all__ = ["PATIENT_COUNT_KEYS", "ROW_KEYS", "build", "execute"]
