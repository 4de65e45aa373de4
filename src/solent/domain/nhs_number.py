"""NHS numbers: ten digits whose last is a modulus-11 check digit (NHS Data Dictionary), and
the ranges they are issued from (R2)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

_SEPARATORS = re.compile(r"[\s-]")
NHS_ISSUER = "NHS"
NHS_FHIR_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"


def normalise(value: str) -> str:
    """Strip the spaces and dashes people type (``943 476 5919`` -> ``9434765919``)."""
    return _SEPARATORS.sub("", value or "")


def check_digit(first_nine: str) -> int | None:
    """The check digit for nine digits, or None when no valid number can end them (remainder 10)."""
    total = sum(int(d) * (10 - i) for i, d in enumerate(first_nine))
    digit = 11 - total % 11
    if digit == 11:
        return 0
    if digit == 10:
        return None
    return digit


def is_valid(value: str) -> bool:
    """True when ``value`` is ten digits with a correct modulus-11 check digit."""
    n = normalise(value)
    if len(n) != 10 or not n.isdigit():
        return False
    expected = check_digit(n[:9])
    return expected is not None and expected == int(n[9])


def is_placeholder(number: str) -> bool:
    """Legacy placeholders such as 0000000000 pass the checksum but name nobody (R2)."""
    return len(set(number)) == 1


def complete(first_nine: str) -> str | None:
    """Append the check digit; used to make synthetic test numbers (999 range)."""
    digit = check_digit(first_nine)
    return None if digit is None else first_nine + str(digit)


class NumberRange(StrEnum):
    """Where a valid number falls among the ranges NHS numbers are issued from (R2)."""

    ISSUED = "issued"  # 300-499 and 600-799 million: England, Wales, Isle of Man
    OUTSIDE_ISSUED = "outside-issued"  # passes the check digit, but no such number is issued
    TEST = "test"  # 999 000 0000-999 999 9999: synthetic numbers for testing, nobody real


# Inclusive bounds as ten-digit integers. The 3xx range (England) is listed by the sources R2
# cites with an inconsistency (Northern Ireland 320-399) that is unverified: counting it as
# issued means only that no warning is raised, which is the cautious reading of a SHOULD-warn.
ISSUED_RANGES = (
    (300_000_0000, 399_999_9999),
    (400_000_0000, 499_999_9999),
    (600_000_0000, 799_999_9999),
)
TEST_RANGE = (999_000_0000, 999_999_9999)

# Data-quality work-queue kinds of R2 (the identity service and ingest raise them).
OUTSIDE_ISSUED_KIND = "nhs-number-range"
TEST_NUMBER_KIND = "nhs-test-number"


def number_range(number: str) -> NumberRange:
    """The range of a ten-digit number (spaces and dashes allowed); ValueError otherwise.

    Only the range is judged: call ``is_valid`` and ``is_placeholder`` for the rest."""
    n = normalise(number)
    if len(n) != 10 or not n.isdigit():
        raise ValueError(f"{number!r} is not ten digits")
    value = int(n)
    if TEST_RANGE[0] <= value <= TEST_RANGE[1]:
        return NumberRange.TEST
    if any(low <= value <= high for low, high in ISSUED_RANGES):
        return NumberRange.ISSUED
    return NumberRange.OUTSIDE_ISSUED


@dataclass(frozen=True, slots=True)
class RangeFinding:
    """What a valid, non-placeholder number's range asks of a person (R2).

    ``kind`` is the work-queue kind, ``reason`` says why in words for people, and ``linkable``
    whether the number may still link records across trusts (when traced)."""

    kind: str
    reason: str
    linkable: bool


def range_finding(number: str, *, production: bool) -> RangeFinding | None:
    """None for an issued number, and for a test number outside production (demo data,
    tests and training archives use them on purpose); else what to put on the work queue."""
    n = normalise(number)
    found = number_range(n)
    if found is NumberRange.TEST:
        if not production:
            return None
        return RangeFinding(
            TEST_NUMBER_KIND,
            f"NHS number {n} is a test number (range 999 000 0000-999 999 9999) and names "
            "nobody real; kept on the record but never used to link it across trusts",
            linkable=False,
        )
    if found is NumberRange.OUTSIDE_ISSUED:
        return RangeFinding(
            OUTSIDE_ISSUED_KIND,
            f"NHS number {n} passes the check digit but lies outside the ranges currently "
            "issued (300-499 and 600-799 million); kept, and linked as usual if traced; "
            "check it against PDS or the sending system",
            linkable=True,
        )
    return None


def range_label(number: str | None) -> str | None:
    """The ``NumberRange`` value shown next to a stored number in views; None when there is
    no number or it is not ten digits (a number that fails the check digit still gets one)."""
    try:
        return number_range(number).value if number else None
    except ValueError:
        return None
