"""Pure domain rules: NHS numbers (modulus 11) and DICOM UIDs."""

from __future__ import annotations

import pytest

from solent.domain import nhs_number
from solent.domain.uids import MAX_UID_LENGTH, is_valid_uid, uid_problem


@pytest.mark.parametrize(
    "value",
    [
        "9434765919",  # the NHS Data Dictionary's worked example
        "4010232137",
        "943 476 5919",  # as people type it
        "943-476-5919",
        " 9434765919 ",
        "9990000026",  # a synthetic test-range number (999...)
    ],
)
def test_valid_nhs_numbers(value: str) -> None:
    assert nhs_number.is_valid(value)


@pytest.mark.parametrize(
    "value",
    [
        "9434765918",  # check digit off by one
        "9434765910",
        "4010232138",
        "943476591",  # nine digits
        "94347659190",  # eleven digits
        "94347659A9",
        "",
        "0000000001",
    ],
)
def test_invalid_nhs_numbers(value: str) -> None:
    assert not nhs_number.is_valid(value)


@pytest.mark.parametrize("first_nine", ["999000000", "999000014", "999000028"])
def test_remainder_ten_means_no_valid_number(first_nine: str) -> None:
    """When 11 - (weighted sum mod 11) is 10, no check digit makes a valid number."""
    assert nhs_number.check_digit(first_nine) is None
    assert nhs_number.complete(first_nine) is None
    assert not any(nhs_number.is_valid(first_nine + str(d)) for d in range(10))


def test_remainder_eleven_means_check_digit_zero() -> None:
    # 11 - (sum mod 11) == 11 happens when the weighted sum is a multiple of 11: digit 0.
    nine = next(
        f"{n:09d}" for n in range(100000000, 100001000) if nhs_number.check_digit(f"{n:09d}") == 0
    )
    total = sum(int(d) * (10 - i) for i, d in enumerate(nine))
    assert total % 11 == 0
    assert nhs_number.is_valid(nine + "0")


def test_complete_and_normalise() -> None:
    assert nhs_number.complete("943476591") == "9434765919"
    assert nhs_number.normalise("943 476-5919") == "9434765919"
    assert nhs_number.normalise("") == ""


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.840.10008.1.2",
        "1.2.826.0.1.3680043.10.1455.1",
        "1.2.03.4",  # leading zero in a component: seen from old GE/Philips, accepted
        "1",
        "1." + "2" * (MAX_UID_LENGTH - 2),
    ],
)
def test_valid_uids(uid: str) -> None:
    assert uid_problem(uid) is None and is_valid_uid(uid)


@pytest.mark.parametrize(
    ("uid", "problem"),
    [
        ("", "missing"),
        (None, "missing"),
        (12, "missing"),
        ("1." + "2" * (MAX_UID_LENGTH - 1), "longer than 64 characters"),
        ("1..2", "not digits separated by dots"),
        ("1.2.", "not digits separated by dots"),
        (".1.2", "not digits separated by dots"),
        ("1.2.a", "not digits separated by dots"),
        ("1.2 ", "not digits separated by dots"),
        ("1.2\x00", "not digits separated by dots"),
        ("../../../tmp/pwned", "not digits separated by dots"),
        ("1.2\n", "not digits separated by dots"),
        ("1.2;DROP TABLE", "not digits separated by dots"),
    ],
)
def test_invalid_uids(uid: object, problem: str) -> None:
    assert uid_problem(uid) == problem
    assert not is_valid_uid(uid)
