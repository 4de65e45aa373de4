"""The retention date of a study (R42), from the Records Management Code of Practice.

Pure: the inputs are dates already gathered across every consortium trust
(``solent.services.retention_schedule``), so the rule can be read and tested on its own.

Every rule that applies gives a date; the study is kept until the latest of them, and each
one is returned so a records manager can see why. Pathway flags and the death date only ever
add rules, never shorten one: where the Code offers an alternative ("30 years from diagnosis,
or 8 years after death") both are listed and the later one governs, because an archive that
keeps too long can still delete, and one that deleted too early cannot undo it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

PathwayKind = Literal["cancer", "transplant", "cjd", "maternity", "screening", "clinical_trial"]
PATHWAYS: tuple[PathwayKind, ...] = (
    "cancer",
    "transplant",
    "cjd",
    "maternity",
    "screening",
    "clinical_trial",
)

#: Code of Practice minimum, in years, for each pathway (RCR 2025 summary; clinical trials:
#: 25 years, the trial master file period of the Medicines for Human Use (Clinical Trials)
#: Regulations, since R42 names the flag without a period).
PATHWAY_YEARS: dict[PathwayKind, int] = {
    "cancer": 30,  # from diagnosis; or 8 years after death
    "transplant": 30,
    "cjd": 30,  # or 10 years after death
    "maternity": 25,
    "screening": 10,  # from acquisition
    "clinical_trial": 25,
}
_AFTER_DEATH: dict[PathwayKind, int] = {"cancer": 8, "cjd": 10}
CHILD_UNTIL, CHILD_17_UNTIL, CHILD_AFTER_DEATH = 25, 26, 8
RCR_YEARS, RCR_AFTER_DEATH = 30, 10


@dataclass(frozen=True, slots=True)
class Pathway:
    """A pathway flag on the study or on the person. ``since`` is the date it counts from
    (diagnosis, transplant, end of trial); unknown: the last contact (the later anchor)."""

    kind: PathwayKind
    since: date | None = None
    source: str = ""  # "flag 12 by user:rm@ZZA", "derived: modality MG"


@dataclass(frozen=True, slots=True)
class Inputs:
    acquired: date  # the study's date (else when it was received)
    last_contact: date  # the latest contact with any consortium trust, across linked records
    birth_date: date | None
    death_date: date | None
    pathways: tuple[Pathway, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    """What the consortium set: ``adult_years`` at least the Code's 8; ``rcr`` adds the RCR
    recommendation (30 years from last seen, or 10 years after death)."""

    adult_years: int = 8
    rcr: bool = False


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    until: date
    basis: str  # what it counts from, in words


@dataclass(frozen=True, slots=True)
class Retention:
    until: date
    governing: Rule
    rules: tuple[Rule, ...]
    age_at_last_contact: int | None


def add_years(day: date, years: int) -> date:
    """``day`` moved by whole years; 29 February becomes 1 March (the later day). Past the
    calendar's ends (an input of year 9999 plus 30 years) it is the first or last day there is:
    kept for ever, not an error on every read of the study's retention."""
    year = day.year + years
    if year > date.max.year:
        return date.max
    if year < date.min.year:
        return date.min
    try:
        return day.replace(year=year)
    except ValueError:
        return date(year, 3, 1)


def age_on(birth: date, day: date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def retention(inputs: Inputs, policy: Policy) -> Retention:
    """Every rule that applies to the study, and the latest date among them."""
    seen, death = inputs.last_contact, inputs.death_date
    rules = [
        Rule(
            "adult",
            add_years(seen, policy.adult_years),
            f"{policy.adult_years} years after last contact {seen.isoformat()}",
        )
    ]
    age = age_on(inputs.birth_date, seen) if inputs.birth_date else None
    if inputs.birth_date is None:
        rules.append(
            Rule(
                "age-unknown",
                add_years(seen, CHILD_UNTIL),
                "no date of birth: kept as a child seen at birth (25 years after last contact)",
            )
        )
    elif age is not None and age < 18:
        until_age = CHILD_17_UNTIL if age == 17 else CHILD_UNTIL
        rules.append(
            Rule(
                "child",
                add_years(inputs.birth_date, until_age),
                f"{until_age}th birthday (aged {age} at last contact)",
            )
        )
        if death:
            rules.append(
                Rule(
                    "child-death",
                    add_years(death, CHILD_AFTER_DEATH),
                    f"{CHILD_AFTER_DEATH} years after death {death.isoformat()}",
                )
            )
    if policy.rcr:
        rules.append(
            Rule("rcr", add_years(seen, RCR_YEARS), f"RCR: 30 years after last contact {seen}")
        )
        if death:
            rules.append(
                Rule(
                    "rcr-death",
                    add_years(death, RCR_AFTER_DEATH),
                    f"RCR: 10 years after death {death.isoformat()}",
                )
            )
    for flag in inputs.pathways:
        rules.extend(_pathway_rules(flag, inputs))
    governing = max(rules, key=lambda r: r.until)  # the first of the latest
    return Retention(governing.until, governing, tuple(rules), age)


def _pathway_rules(flag: Pathway, inputs: Inputs) -> list[Rule]:
    years = PATHWAY_YEARS[flag.kind]
    by = f" ({flag.source})" if flag.source else ""
    if flag.kind == "screening":
        start, what = flag.since or inputs.acquired, "acquisition"
    elif flag.since is not None:
        start, what = flag.since, "pathway date"
    else:
        start, what = inputs.last_contact, "last contact"
    out = [Rule(flag.kind, add_years(start, years), f"{years} years from {what} {start}{by}")]
    after = _AFTER_DEATH.get(flag.kind)
    if after is not None and inputs.death_date is not None:
        death = inputs.death_date
        out.append(
            Rule(
                f"{flag.kind}-death",
                add_years(death, after),
                f"{after} years after death {death.isoformat()}{by}",
            )
        )
    return out
