"""Which of a patient's earlier studies are relevant to the current one (R47).

Pure rules over what the index knows of each study (date, modalities, mapped procedure code and
body region, R19), so the choice is testable without an archive. A prior is relevant when it
matches the current procedure on one of the configured criteria; the best match comes first:

1. ``code``: the same normalised procedure (NICIP, else SNOMED CT);
2. ``region``: a body region in common (from the mapping table: a CT chest, abdomen and pelvis
   shares ``CHEST`` with a chest X-ray);
3. ``modality``: a modality in common, when the body region of either study is unknown (a CT
   of another region is not a relevant prior; a CT whose region nobody mapped may be).

Ties go to the newer study. Older than ``max_age_days`` or beyond ``max_priors``: left out. With
no current procedure at all (an admission), the newest priors are chosen by age alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

CRITERIA = ("code", "region", "modality")


@dataclass(frozen=True, slots=True)
class Procedure:
    """A study or order as relevance sees it."""

    study_uid: str
    study_date: str | None  # YYYYMMDD
    modalities: frozenset[str]
    code: str | None  # Mapped.key
    regions: frozenset[str]  # Mapped.regions
    trust: str | None = None


@dataclass(frozen=True, slots=True)
class Rules:
    max_priors: int = 3
    max_age_days: int = 5 * 365
    criteria: tuple[str, ...] = CRITERIA

    @staticmethod
    def parse_criteria(text: str) -> tuple[str, ...]:
        """``code,region,modality`` (any subset, in any order); ValueError on others."""
        wanted = tuple(c.strip().lower() for c in text.split(",") if c.strip())
        unknown = [c for c in wanted if c not in CRITERIA]
        if unknown:
            raise ValueError(f"unknown prior relevance criteria {unknown}; known: {CRITERIA}")
        return wanted


def study_day(value: str | None) -> date | None:
    """A DICOM date (YYYYMMDD) as a date; None when absent or not a date."""
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8])) if value else None
    except (ValueError, IndexError):
        return None


def match(current: Procedure | None, prior: Procedure, criteria: Sequence[str]) -> str | None:
    """The best criterion on which ``prior`` is relevant to ``current``; None: not relevant."""
    if current is None:
        return "recent"
    for criterion in CRITERIA:  # best first, whatever order they were configured in
        if criterion not in criteria:
            continue
        if criterion == "code" and current.code and current.code == prior.code:
            return "code"
        if criterion == "region" and current.regions & prior.regions:
            return "region"
        if (
            criterion == "modality"
            and not (current.regions and prior.regions)
            and current.modalities & prior.modalities
        ):
            return "modality"
    return None


def relevant_priors(
    current: Procedure | None,
    candidates: Iterable[Procedure],
    rules: Rules,
    today: date,
) -> list[tuple[Procedure, str]]:
    """The priors to prefetch, best first, each with the criterion it matched on."""
    oldest = today - timedelta(days=rules.max_age_days)
    rank = {c: n for n, c in enumerate((*CRITERIA, "recent"))}
    chosen: list[tuple[Procedure, str]] = []
    for prior in candidates:
        if current is not None and prior.study_uid == current.study_uid:
            continue
        when = study_day(prior.study_date)
        if when is None or when < oldest:
            continue  # an undated study is not known to be within the age
        why = match(current, prior, rules.criteria)
        if why is not None:
            chosen.append((prior, why))
    chosen.sort(key=lambda pw: (rank[pw[1]], -(study_day(pw[0].study_date) or oldest).toordinal()))
    return chosen[: rules.max_priors]


def hanging_order(
    current: Procedure, priors: Sequence[Procedure]
) -> list[tuple[Procedure, str | None]]:
    """Every prior for the reading screen, the one to hang first (R19): the relevant ones
    (``match`` on every criterion, whatever their age: a reader compares with the last study of
    the same procedure even years back), best match and then newest first, then the others by
    date, newest first. Each with the criterion it matched on (None: not relevant)."""
    rank = {c: n for n, c in enumerate(CRITERIA)}
    ranked = [(p, match(current, p, CRITERIA)) for p in priors if p.study_uid != current.study_uid]

    def key(pw: tuple[Procedure, str | None]) -> tuple[int, int]:
        day = study_day(pw[0].study_date)
        return (rank.get(pw[1] or "", len(CRITERIA)), -(day.toordinal() if day else 0))

    return sorted(ranked, key=key)
