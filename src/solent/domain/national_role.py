"""The national RBAC role a user's session acts under (R33).

NHS national RBAC gives a person one or more *roles*, each at one organisation (ODS code): a
job role (an R-code, the last part of a ``role_code`` such as ``S8000:G8000:R8000``) and the
activities (B-codes) held with it. The user picks one role, and with it one organisation, at
login; the session then acts for that organisation alone. What the activities allow in Solent
is the consortium's policy (services/national_rbac.py), resolved once when the caller is
authenticated and carried here so every service decides on the same answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

JOB_ROLE = re.compile(r"^R[0-9]{4,5}$")
ACTIVITY = re.compile(r"^B[0-9]{4}$")


def job_role_of(role_code: str) -> str | None:
    """The R-code of a national ``role_code`` (``S8000:G8000:R8000`` or plain ``R8000``)."""
    for part in reversed(role_code.strip().split(":")):
        if JOB_ROLE.match(part.strip()):
            return part.strip()
    return None


@dataclass(frozen=True, slots=True)
class NationalRole:
    """One role a person holds: at an organisation, a job role and activities held with it."""

    org: str
    job_role: str
    activities: frozenset[str] = frozenset()
    #: CIS2's ``person_roleid``: which of the person's roles was selected (None: a local
    #: assignment, selected by its organisation).
    person_role_id: str | None = None


@dataclass(frozen=True, slots=True)
class RoleInForce:
    """The selected role after the policy: what the session may do and why (for audit)."""

    role: NationalRole
    #: Every activity in force: the job role's baseline, those held, and all they include.
    activities: frozenset[str]
    #: Solent permission names (services/access.Permission values) the activities grant.
    permissions: frozenset[str]
    #: Solent roles the activities grant (MDT membership and the like).
    roles: frozenset[str]

    @property
    def org(self) -> str:
        return self.role.org

    @property
    def job_role(self) -> str:
        return self.role.job_role
