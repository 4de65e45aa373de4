"""NHS numbers: ten digits whose last is a modulus-11 check digit (NHS Data Dictionary)."""

from __future__ import annotations

import re

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
