"""DICOM UID checks (PS3.5 9.1).

Real-world archives hold UIDs with leading zeros in components (old GE, Philips), so we accept
those; we never accept anything but digits and dots, because UIDs reach URLs, logs and SQL.
"""

from __future__ import annotations

import re

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_UID_LENGTH = 64


def uid_problem(value: object) -> str | None:
    """Why ``value`` is not a usable UID, or None when it is."""
    if not isinstance(value, str) or not value:
        return "missing"
    if len(value) > MAX_UID_LENGTH:
        return f"longer than {MAX_UID_LENGTH} characters"
    if not _UID.fullmatch(value):  # fullmatch: "$" would accept a trailing newline
        return "not digits separated by dots"
    return None


def is_valid_uid(value: object) -> bool:
    return uid_problem(value) is None
