"""The consortium's national RBAC policy (R33): which activities grant what in Solent.

National RBAC defines job roles (R-codes) and activities (B-codes); it does not say what a
PACS lets each do. The consortium decides that, so the mapping is data, read from the TOML file
``SOLENT_RBAC_POLICY`` (docs/examples/national-rbac-policy.toml is a documented example)::

    [activities.B0264]
    name = "..."                 # for people; not used in decisions
    permissions = ["read"]       # Solent permissions: read, store, break-glass, audit, retention
    roles = ["clinician"]        # Solent roles (MDT membership...); they bring their permissions
    includes = ["B0360"]         # activities this one includes (transitively)

    [job_roles.R8000]
    activities = ["B0264"]       # the baseline every holder of the job role has

A session's activities are the job role's baseline plus those held with the role, then every
activity they include, transitively (a cycle in the file is harmless). Administration is never
granted by national RBAC: an administrator is a separate local account (issue 11), so the
policy refuses ``admin`` and ``pacs_admin``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from solent.domain.national_role import ACTIVITY, JOB_ROLE, NationalRole, RoleInForce
from solent.errors import ConfigurationError
from solent.services.access import NOT_WITH_ADMIN, ROLE_PERMISSIONS, Permission, Role

#: What the policy may grant: everything but administration.
GRANTABLE_PERMISSIONS = frozenset(Permission) - {Permission.ADMIN}
GRANTABLE_ROLES = frozenset(NOT_WITH_ADMIN)


@dataclass(frozen=True, slots=True)
class Activity:
    code: str
    name: str
    permissions: frozenset[Permission]
    roles: frozenset[Role]
    includes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NationalPolicy:
    activities: Mapping[str, Activity]
    #: R-code -> the baseline activities of the job role.
    job_roles: Mapping[str, frozenset[str]]
    source: str = ""

    def expand(self, codes: Iterable[str]) -> frozenset[str]:
        """``codes`` and every activity they include, transitively; cycle-safe."""
        seen: set[str] = set()
        todo = [c for c in codes]
        while todo:
            code = todo.pop()
            if code in seen:
                continue
            seen.add(code)
            found = self.activities.get(code)
            if found is not None:
                todo.extend(found.includes)
        return frozenset(seen)

    def resolve(self, role: NationalRole) -> RoleInForce:
        """What ``role`` may do in Solent under this policy."""
        baseline = self.job_roles.get(role.job_role, frozenset())
        activities = self.expand(baseline | role.activities)
        permissions: set[Permission] = set()
        roles: set[Role] = set()
        for code in activities:
            found = self.activities.get(code)
            if found is None:  # held, but the consortium gives it no meaning in Solent
                continue
            permissions |= found.permissions
            roles |= found.roles
        for granted in roles:
            permissions |= ROLE_PERMISSIONS[granted]
        return RoleInForce(
            role,
            activities,
            frozenset(p.value for p in permissions),
            frozenset(r.value for r in roles),
        )

    def granting(self, permission: Permission) -> list[str]:
        """Activities that grant ``permission`` (directly or by a role), for refusal messages."""
        return sorted(
            code
            for code, a in self.activities.items()
            if permission in a.permissions
            or any(permission in ROLE_PERMISSIONS[r] for r in a.roles)
        )

    def unknown(self, role: NationalRole) -> list[str]:
        """Codes of ``role`` the policy does not know (a typo in a local assignment)."""
        out = [] if role.job_role in self.job_roles else [role.job_role]
        return out + sorted(c for c in role.activities if c not in self.activities)


def _codes(value: Any, where: str, pattern: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"{where} must be a list of codes")
    bad = [v for v in value if not pattern.match(v)]
    if bad:
        raise ConfigurationError(f"{where}: {', '.join(bad)} is not a code of that kind")
    return tuple(value)


def _names(
    value: Any, where: str, kind: type[Permission] | type[Role], allowed: frozenset[Any]
) -> frozenset[Any]:
    if not isinstance(value, list):
        raise ConfigurationError(f"{where} must be a list")
    out = set()
    for v in value:
        try:
            item = kind(str(v))
        except ValueError:
            item = None
        if item is None or item not in allowed:
            raise ConfigurationError(
                f"{where}: {v!r} cannot be granted by national RBAC; one of "
                f"{', '.join(sorted(a.value for a in allowed))} (administration is a separate "
                "local account)"
            )
        out.add(item)
    return frozenset(out)


def parse_policy(doc: Mapping[str, Any], source: str = "") -> NationalPolicy:
    """A policy from its TOML document; ConfigurationError says what to fix."""
    unknown = set(doc) - {"activities", "job_roles"}
    if unknown:
        raise ConfigurationError(f"{source}: unknown section(s) {', '.join(sorted(unknown))}")
    activities: dict[str, Activity] = {}
    for code, entry in dict(doc.get("activities", {})).items():
        where = f"{source} activities.{code}"
        if not ACTIVITY.match(code) or not isinstance(entry, dict):
            raise ConfigurationError(f"{where}: an activity is a B-code (B0000) with a table")
        extra = set(entry) - {"name", "permissions", "roles", "includes"}
        if extra:
            raise ConfigurationError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        activities[code] = Activity(
            code,
            str(entry.get("name", "")),
            _names(
                entry.get("permissions", []),
                f"{where}.permissions",
                Permission,
                GRANTABLE_PERMISSIONS,
            ),
            _names(entry.get("roles", []), f"{where}.roles", Role, GRANTABLE_ROLES),
            _codes(entry.get("includes", []), f"{where}.includes", ACTIVITY),
        )
    for a in activities.values():
        missing = [c for c in a.includes if c not in activities]
        if missing:
            raise ConfigurationError(
                f"{source} activities.{a.code}.includes names {', '.join(missing)}, which the "
                "policy does not define"
            )
    job_roles: dict[str, frozenset[str]] = {}
    for code, entry in dict(doc.get("job_roles", {})).items():
        where = f"{source} job_roles.{code}"
        if not JOB_ROLE.match(code) or not isinstance(entry, dict):
            raise ConfigurationError(f"{where}: a job role is an R-code (R8000) with a table")
        extra = set(entry) - {"name", "activities"}
        if extra:
            raise ConfigurationError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        baseline = _codes(entry.get("activities", []), f"{where}.activities", ACTIVITY)
        missing = [c for c in baseline if c not in activities]
        if missing:
            raise ConfigurationError(
                f"{where}.activities names {', '.join(missing)}, which the policy does not define"
            )
        job_roles[code] = frozenset(baseline)
    return NationalPolicy(activities, job_roles, source)


def load_policy(path: Path) -> NationalPolicy:
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigurationError(f"SOLENT_RBAC_POLICY {path} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"SOLENT_RBAC_POLICY {path} is not valid TOML: {exc}") from exc
    return parse_policy(doc, str(path))
