"""The retention rule of a study (R42) with concrete dates: the Records Management Code of
Practice minimums, the RCR option, pathway flags and death; the latest applicable date wins and
every rule is shown."""

from __future__ import annotations

from datetime import date

import pytest

from solent.domain.retention_rules import Inputs, Pathway, Policy, add_years, retention

CODE = Policy()


def kept(inputs: Inputs, policy: Policy = CODE) -> tuple[date, str]:
    result = retention(inputs, policy)
    return result.until, result.governing.name


def adult(seen: date, **kw: object) -> Inputs:
    base: dict[str, object] = {
        "acquired": seen,
        "last_contact": seen,
        "birth_date": date(1960, 4, 17),
        "death_date": None,
    }
    base.update(kw)
    return Inputs(**base)  # type: ignore[arg-type]


def test_an_adult_is_kept_8_years_after_last_contact_or_longer_if_the_consortium_says() -> None:
    assert kept(adult(date(2015, 3, 9))) == (date(2023, 3, 9), "adult")
    assert kept(adult(date(2015, 3, 9)), Policy(adult_years=10)) == (date(2025, 3, 9), "adult")


def test_a_child_is_kept_to_the_25th_birthday_or_26th_when_17_at_last_contact() -> None:
    born = date(2010, 5, 20)
    child = adult(date(2020, 1, 15), birth_date=born)
    result = retention(child, CODE)
    assert (result.until, result.governing.name) == (date(2035, 5, 20), "child")
    assert result.age_at_last_contact == 9
    assert [r.name for r in result.rules] == ["adult", "child"]  # both shown: why
    seventeen = adult(date(2020, 6, 1), birth_date=date(2003, 1, 1))
    assert kept(seventeen) == (date(2029, 1, 1), "child")  # 26th birthday
    eighteen = adult(date(2021, 6, 1), birth_date=date(2003, 1, 1))
    assert kept(eighteen) == (date(2029, 6, 1), "adult")


def test_no_date_of_birth_keeps_the_study_as_long_as_a_childs() -> None:
    assert kept(adult(date(2012, 2, 1), birth_date=None)) == (date(2037, 2, 1), "age-unknown")


def test_oncology_30_years_from_diagnosis_and_8_after_death_whichever_is_later() -> None:
    cancer = (Pathway("cancer", date(1995, 5, 1)),)
    alive = adult(date(2000, 1, 10), pathways=cancer)
    assert kept(alive) == (date(2025, 5, 1), "cancer")
    died = adult(date(2000, 1, 10), pathways=cancer, death_date=date(2019, 2, 2))
    assert kept(died) == (date(2027, 2, 2), "cancer-death")
    undated = adult(date(2000, 1, 10), pathways=(Pathway("cancer"),))
    assert kept(undated) == (date(2030, 1, 10), "cancer")  # from last contact, the later


def test_cjd_transplant_maternity_screening_and_trials() -> None:
    seen = date(2001, 7, 1)
    died = date(2025, 1, 1)
    assert kept(adult(seen, pathways=(Pathway("cjd"),), death_date=died)) == (
        date(2035, 1, 1),
        "cjd-death",
    )
    assert kept(adult(seen, pathways=(Pathway("transplant"),))) == (date(2031, 7, 1), "transplant")
    assert kept(adult(seen, pathways=(Pathway("maternity"),))) == (date(2026, 7, 1), "maternity")
    trial = (Pathway("clinical_trial", date(2003, 1, 1)),)
    assert kept(adult(seen, pathways=trial)) == (date(2028, 1, 1), "clinical_trial")
    # Screening counts from acquisition, not from a later contact at another trust.
    screen = adult(date(2017, 1, 1), acquired=date(2014, 3, 3), pathways=(Pathway("screening"),))
    assert kept(screen) == (date(2025, 1, 1), "adult")
    alone = adult(date(2014, 3, 3), pathways=(Pathway("screening"),))
    assert kept(alone) == (date(2024, 3, 3), "screening")


def test_a_flag_or_a_death_never_shortens_the_general_rule() -> None:
    child = adult(
        date(2020, 1, 15),
        birth_date=date(2010, 5, 20),
        death_date=date(2020, 2, 1),
        pathways=(Pathway("screening"),),
    )
    result = retention(child, CODE)
    assert (result.until, result.governing.name) == (date(2035, 5, 20), "child")
    assert {r.name: r.until for r in result.rules}["child-death"] == date(2028, 2, 1)


def test_rcr_30_years_from_last_seen_or_10_after_death() -> None:
    rcr = Policy(rcr=True)
    assert kept(adult(date(2010, 1, 1)), rcr) == (date(2040, 1, 1), "rcr")
    died = adult(date(2000, 1, 1), death_date=date(2025, 6, 30))
    assert kept(died, rcr) == (date(2035, 6, 30), "rcr-death")


@pytest.mark.parametrize(
    ("day", "years", "moved"),
    [(date(2012, 2, 29), 8, date(2020, 2, 29)), (date(2012, 2, 29), 7, date(2019, 3, 1))],
)
def test_29_february_moves_to_1_march_in_a_common_year(day: date, years: int, moved: date) -> None:
    assert add_years(day, years) == moved
