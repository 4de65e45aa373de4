"""SMART App Launch scopes (R23): what a launched app's token may read.

An EPR launches the viewer (EHR launch: ``iss`` and ``launch``); the authorization server then
issues an access token whose ``scope`` holds, e.g., ``launch openid fhirUser
patient/ImagingStudy.rs`` and whose ``patient`` claim names the launch patient. Such a token
reads that patient only, and through the FHIR API only the resource types its ``patient/``
scopes name: SMART v2 ``patient/ImagingStudy.rs`` (r: read, s: search) or v1
``patient/ImagingStudy.read``; ``*`` for every type. Scopes other than ``patient/`` add nothing
here: the user's own role and relationship still decide (they are never widened by a scope).
"""

from __future__ import annotations

import re

from solent.domain.principal import SmartLaunch

MAX_ID = 2**63 - 1  # the largest database key (PostgreSQL bigint)
_PATIENT_SCOPE = re.compile(r"^patient/(\*|[A-Za-z]+)\.(\*|read|write|[cruds]+)(\?.*)?$")


class LaunchInvalid(ValueError):
    """The token's launch context cannot be used; the message says why (safe to show)."""


def scopes_of(claims: dict[str, object]) -> list[str]:
    """The token's scopes: RFC 9068 ``scope`` (space-separated) or a ``scp`` list."""
    raw = claims.get("scope", claims.get("scp"))
    if isinstance(raw, str):
        return raw.split()
    if isinstance(raw, list):
        return [str(s) for s in raw]
    return []


def launch_of(claims: dict[str, object]) -> SmartLaunch | None:
    """The launch context of a token with ``patient/`` scopes; None for a token without."""
    scopes = frozenset(s for s in scopes_of(claims) if s.startswith("patient/"))
    if not scopes:
        return None
    bad = sorted(s for s in scopes if not _PATIENT_SCOPE.match(s))
    if bad:
        raise LaunchInvalid(f"scope {bad[0]!r} is not a SMART patient scope this archive reads")
    patient = claims.get("patient")
    text = str(patient)
    # ASCII digits within a database key: "²" passed isdigit() and failed int() (a 500), and
    # an id past 2**63-1 reached PostgreSQL on every read of the launch patient.
    if (
        isinstance(patient, bool)
        or not isinstance(patient, str | int)
        or not (text.isascii() and text.isdigit())
        or not 1 <= int(text) <= MAX_ID
    ):
        raise LaunchInvalid(
            "a token with patient/ scopes must name its launch patient (claim 'patient', "
            "the FHIR Patient id of this archive)"
        )
    return SmartLaunch(int(text), scopes)


def allows(launch: SmartLaunch, resource_type: str, interaction: str) -> bool:
    """Whether the launch's scopes allow ``interaction`` ('r' read, 's' search, 'c' create,
    'u' update) of the type."""
    for scope in launch.scopes:
        found = _PATIENT_SCOPE.match(scope)
        if found is None or found.group(1) not in ("*", resource_type):
            continue
        perms = found.group(2)
        # SMART v1 "read" / "write" name the read and the write interactions, not all of them.
        if perms == "*" or interaction in {"read": "rs", "write": "cud"}.get(perms, perms):
            return True
    return False
