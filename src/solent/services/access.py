"""Authorization in one place: roles, the legitimate relationship, break-glass.

Every adapter asks the same questions here, so a rule changes once for DICOMweb, DIMSE, FHIR,
HL7 and the JSON API alike:

* ``permits(principal, Permission.X)``: may this role do this kind of thing at all?
* ``patient_filter(principal)`` / ``study_filter(principal)``: a SQL condition to AND into any
  query, so queries (counts and aggregates included) never see records the caller may not see.
* ``check_study(principal, uid)`` / ``check_patient(...)``: direct access to one record; raises
  AccessDenied naming break-glass (and audits the refusal).
* ``break_glass(...)``: time-limited access to one patient, audited at high priority and flagged
  for review by the trust's privacy officer.

A user sees a patient's records from *all* trusts when the patient has a record, study or order
at one of the user's trusts (or a record of the same person does); see ``index/access.py``.
Administrators manage configuration but do not read patient data by their admin role.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, exists, false, select, true
from sqlalchemy.sql.elements import ColumnElement

from solent.domain.principal import Principal, PrincipalKind
from solent.errors import InvalidInput, NotFound, SolentError
from solent.index import schema as t
from solent.index import security as sec
from solent.index.access import (
    VisiblePatients,
    granted_pks,
    studies_among,
    visible_counts,
    visible_patient_pks,
)
from solent.index.sql import Index
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail, PatientRef, audit_fields
from solent.services.smart import allows as smart_allows

if TYPE_CHECKING:
    from solent.services.national_rbac import NationalPolicy

log = logging.getLogger(__name__)


class Role(StrEnum):
    CLINICIAN = "clinician"
    RADIOLOGIST = "radiologist"
    MDT_COORDINATOR = "mdt_coordinator"
    PACS_ADMIN = "pacs_admin"
    AUDITOR = "auditor"
    INTEGRATION = "integration"
    #: R43/R44: places and lifts legal holds, approves or refuses retention deletions of its
    #: trusts' records; reads no images, reports or clinical data.
    RECORDS_MANAGER = "records_manager"


class Permission(StrEnum):
    READ = "read"  # query, view and retrieve patient data (within the legitimate relationship)
    STORE = "store"  # send instances in (STOW-RS)
    BREAK_GLASS = "break-glass"
    ADMIN = "admin"  # users, nodes, trusts, configuration; no patient data
    AUDIT = "audit"  # search and export the audit trail, review break-glass
    RETENTION = "retention"  # legal holds, retention deletion approval; no patient data reads


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.CLINICIAN: frozenset({Permission.READ, Permission.STORE, Permission.BREAK_GLASS}),
    Role.RADIOLOGIST: frozenset({Permission.READ, Permission.STORE, Permission.BREAK_GLASS}),
    Role.MDT_COORDINATOR: frozenset({Permission.READ}),
    Role.PACS_ADMIN: frozenset({Permission.ADMIN}),
    Role.AUDITOR: frozenset({Permission.AUDIT}),
    Role.INTEGRATION: frozenset({Permission.READ, Permission.STORE}),
    Role.RECORDS_MANAGER: frozenset({Permission.RETENTION}),
}

#: Roles an administrator account may not hold: each reads patient data or the audit trail, or
#: (records_manager) approves the destruction of records: an administrator makes accounts, so
#: one that could approve deletions could also make the "second person" it needs.
#: Refused when an account is made or its roles change (security/users.py); an account or an
#: OpenID Connect claim set that holds them anyway (made before the rule, or by the identity
#: provider) gets the administrator's permissions only (``permissions_of``).
NOT_WITH_ADMIN = frozenset(
    {
        Role.CLINICIAN,
        Role.RADIOLOGIST,
        Role.MDT_COORDINATOR,
        Role.INTEGRATION,
        Role.AUDITOR,
        Role.RECORDS_MANAGER,
    }
)

BREAK_GLASS_REASONS = {
    "emergency": "Emergency care: the patient is in front of me",
    "transfer": "Inter-trust transfer: records not yet registered here",
    "referral": "Urgent referral not yet recorded",
    "other": "Other (explain in the text)",
}


class AccessDenied(SolentError):
    """The principal's role may not do this kind of thing (never about one record)."""

    def __init__(self, message: str, *, break_glass: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.break_glass = break_glass


class NotVisible(NotFound):
    """A record outside the caller's relationship, or one that does not exist: adapters cannot
    tell them apart, which is the point. ``break_glass`` depends on the caller's role only."""

    def __init__(self, message: str, *, break_glass: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.break_glass = break_glass


@dataclass(frozen=True, slots=True)
class Scope:
    """What a principal's reads are limited to: everything, or the records of some trusts."""

    unrestricted: bool
    trusts: frozenset[str]
    user_name: str | None


@dataclass(frozen=True, slots=True)
class Grant:
    id: int
    patient: PatientRef
    expires_at: datetime
    warning: str


def permissions_of(principal: Principal) -> frozenset[Permission]:
    """What the principal's kind and roles allow (records are limited further by scope)."""
    if principal.kind in (PrincipalKind.SYSTEM, PrincipalKind.IMPORTER):
        return frozenset(Permission)
    if principal.kind is PrincipalKind.NODE:
        # What a registered node may do is further limited by its allow-list (DIMSE adapter).
        return frozenset({Permission.READ, Permission.STORE})
    if principal.national is not None:
        # R33: the national role in force decides (the policy grants no administration).
        return frozenset(Permission(p) for p in principal.national.permissions)
    if mixed_admin_roles(principal):
        # An administrator could otherwise give itself patient access: admin wins, the
        # clinical and audit roles count for nothing until the account is split.
        return ROLE_PERMISSIONS[Role.PACS_ADMIN]
    out: set[Permission] = set()
    for name in principal.roles:
        try:
            out |= ROLE_PERMISSIONS[Role(name)]
        except ValueError:
            continue
    return frozenset(out)


def mixed_admin_roles(principal: Principal) -> list[str]:
    """The roles a user holds beside ``pacs_admin`` that no administrator may hold."""
    if principal.kind is not PrincipalKind.USER or Role.PACS_ADMIN.value not in principal.roles:
        return []
    if principal.national is not None:
        return []
    return sorted(r for r in principal.roles if r in NOT_WITH_ADMIN)


def role_names() -> list[str]:
    return [r.value for r in Role]


class AccessService:
    def __init__(
        self,
        index: Index,
        audit: AuditTrail,
        *,
        break_glass_minutes: int = 240,
        national: NationalPolicy | None = None,
    ) -> None:
        self._index = index
        self._audit = audit
        self.break_glass_minutes = break_glass_minutes
        #: The consortium's national RBAC policy (R33); None: local roles only.
        self.national = national

    # -- what a principal may do ------------------------------------------------------------

    def permissions(self, principal: Principal) -> frozenset[Permission]:
        return permissions_of(principal)

    def permits(self, principal: Principal, permission: Permission) -> bool:
        return permission in self.permissions(principal)

    def require(self, principal: Principal, permission: Permission, what: str = "") -> None:
        """Raise AccessDenied (and audit it) unless the principal's role allows ``permission``."""
        if self.permits(principal, permission):
            return
        message = self._refusal(principal, permission, what)
        mixed = mixed_admin_roles(principal)
        if mixed:
            message = (
                f"{what or permission.value} refused: this account holds pacs_admin together "
                f"with {', '.join(mixed)}, and an administrator account reads no patient data "
                "or audit trail and approves no deletion; use a separate account for that role"
            )
        self._audit.record(
            principal,
            AuditAction.PERMISSION_DENIED,
            AuditOutcome.DENIED,
            detail={"permission": permission.value, "what": what},
        )
        raise AccessDenied(message)

    def _refusal(self, principal: Principal, permission: Permission, what: str) -> str:
        """Why ``principal`` may not: its role(s) and what would allow it, in words."""
        doing = what or permission.value
        national = principal.national
        if national is not None:
            held = ", ".join(sorted(national.activities)) or "none"
            granting = self.national.granting(permission) if self.national else []
            return (
                f"your national role {national.job_role} at {national.org} (activities: {held}) "
                f"does not allow {doing}; in this consortium's RBAC policy the activities that "
                f"do are: {', '.join(granting) or 'none'}. Select another role at login, or ask "
                "your Registration Authority for the activity"
            )
        roles = ", ".join(sorted(principal.roles)) or "none"
        return f"your role ({roles}) does not allow {doing}; roles that do: " + ", ".join(
            r.value for r, p in ROLE_PERMISSIONS.items() if permission in p
        )

    def require_resource(self, principal: Principal, resource_type: str, interaction: str) -> None:
        """R23: refuse (403, audited) a FHIR ``interaction`` ('r' read, 's' search) of a
        resource type the caller's SMART launch scopes do not name; no launch: no limit."""
        launch = principal.launch
        if launch is None or smart_allows(launch, resource_type, interaction):
            return
        doing = {"r": "read", "s": "search"}.get(interaction, interaction)
        self._audit.record(
            principal,
            AuditAction.PERMISSION_DENIED,
            AuditOutcome.DENIED,
            detail={"smart_scopes": sorted(launch.scopes), "what": f"{doing} {resource_type}"},
        )
        raise AccessDenied(
            f"this launch's scopes ({' '.join(sorted(launch.scopes))}) do not allow {doing} of "
            f"{resource_type}; the app must ask for patient/{resource_type}.{interaction}"
        )

    def scope(self, principal: Principal, *, conn: Connection | None = None) -> Scope:
        """``conn``: read the user in the caller's transaction (one round trip, no checkout)."""
        if principal.kind in (PrincipalKind.SYSTEM, PrincipalKind.IMPORTER):
            return Scope(True, frozenset(), None)
        trusts = {principal.trust} if principal.trust else set()
        user_name = None
        if principal.kind is PrincipalKind.USER:
            user_name = principal.name
            if principal.acts_for_one_org:
                # R33: the organisation selected at login alone (the authenticator checked
                # the account still holds it).
                return Scope(False, frozenset(trusts), user_name)
            row = sec.get_user(self._index, principal.name, conn=conn)
            if row is not None and not row.disabled:
                trusts |= row.trusts
        return Scope(False, frozenset(trusts), user_name)

    # -- filters for queries -------------------------------------------------------------------

    def visible_patients(
        self, principal: Principal, *, conn: Connection | None = None
    ) -> VisiblePatients | None:
        """SELECT of visible patient pks; None means unrestricted."""
        if not self.permits(principal, Permission.READ):
            return select(t.patient.c.pk).where(false())
        visible = self._visible_patients(principal, conn)
        if principal.launch is None:
            return visible
        # R23: a SMART launch reads its launch patient only (within the caller's relationship).
        launched = t.patient.c.pk == principal.launch.patient
        if visible is None:
            return select(t.patient.c.pk).where(launched)
        return select(t.patient.c.pk).where(launched, t.patient.c.pk.in_(visible))

    def _visible_patients(
        self, principal: Principal, conn: Connection | None
    ) -> VisiblePatients | None:
        scope = self.scope(principal, conn=conn)
        if scope.unrestricted:
            return None
        at = datetime.now(UTC)
        granted: list[int] | None = None
        if self._index.dialect == "postgresql" and scope.user_name is not None:
            # The kept rule has no user in it: the records the user's grants open come along.
            if conn is None:
                with self._index.read() as own:
                    granted = granted_pks(own, scope.user_name, at)
            else:
                granted = granted_pks(conn, scope.user_name, at)
        return visible_patient_pks(scope.trusts, scope.user_name, at, self._index.dialect, granted)

    def patient_filter(self, principal: Principal) -> ColumnElement[bool]:
        """Condition on ``patient`` rows (AND it into any query that reads patients)."""
        visible = self.visible_patients(principal)
        return true() if visible is None else t.patient.c.pk.in_(visible)

    def study_filter(self, principal: Principal) -> ColumnElement[bool]:
        """Condition on ``study`` rows (AND it into any study/series/instance query)."""
        visible = self.visible_patients(principal)
        return true() if visible is None else t.study.c.patient_pk.in_(visible)

    def stats(self, principal: Principal) -> dict[str, int]:
        """Archive counts: all of them for administrators and auditors (operational figures),
        otherwise only over the records the caller may see."""
        if self.permits(principal, Permission.ADMIN) or self.permits(principal, Permission.AUDIT):
            return self._index.stats()
        visible = self.visible_patients(principal)
        if visible is None:
            return self._index.stats()
        with self._index.read() as conn:
            return visible_counts(conn, visible)

    def visible_study_uids(self, principal: Principal, study_uids: Collection[str]) -> set[str]:
        """The subset of ``study_uids`` the caller may read (retrieve filters its matches)."""
        if not study_uids:
            return set()
        visible = self.visible_patients(principal)
        if visible is None:
            return set(study_uids)
        with self._index.read() as conn:
            return studies_among(conn, study_uids, visible)

    # -- direct access to one record -----------------------------------------------------------

    def _patient_visible(self, principal: Principal, patient_pk: int) -> bool:
        visible = self.visible_patients(principal)
        if visible is None:
            return True
        with self._index.read() as conn:
            return bool(
                conn.execute(
                    select(
                        exists().where(t.patient.c.pk == patient_pk, t.patient.c.pk.in_(visible))
                    )
                ).scalar()
            )

    def _deny(
        self,
        principal: Principal,
        *,
        patient: PatientRef | None,
        study_uid: str | None,
        action: AuditAction | str,
        purpose: str | None,
    ) -> NotVisible:
        """Audit the refusal, then answer exactly as for a record that does not exist."""
        self._audit.record(
            principal,
            AuditAction.PERMISSION_DENIED,
            AuditOutcome.DENIED,
            patient=patient,
            study_uid=study_uid,
            purpose=purpose,
            detail={"attempted": AuditAction(action).value},
        )
        return self.not_found(principal, f"study {study_uid}" if study_uid else "patient")

    def not_found(self, principal: Principal, what: str) -> NotVisible:
        """The one answer for "unknown" and "not yours": same status, same words (issue 11).

        Whether break-glass is offered depends only on the caller's role, never on the record,
        so the body tells nothing about what exists."""
        message = f"no {what} that you may see"
        can = self.permits(principal, Permission.BREAK_GLASS)
        if can:
            message += (
                ". If the patient is in your care and their records are held by another trust, "
                "use break-glass: POST /api/break-glass with the patient or study, a reason and "
                "an explanation; access is time-limited, audited and reviewed."
            )
        return NotVisible(message, break_glass=can)

    def visible_among(self, principal: Principal, patient_pks: Collection[int]) -> set[int]:
        """The subset of ``patient_pks`` the caller may see (the one rule, applied to a set)."""
        if not patient_pks or not self.permits(principal, Permission.READ):
            return set()
        visible = self.visible_patients(principal)
        pks = {int(pk) for pk in patient_pks}
        if visible is None:
            return pks
        with self._index.read() as conn:
            rows = conn.execute(
                select(t.patient.c.pk).where(t.patient.c.pk.in_(pks), t.patient.c.pk.in_(visible))
            )
            return {int(r[0]) for r in rows}

    def check_study(
        self,
        principal: Principal,
        study_uid: str,
        action: AuditAction | str = AuditAction.VIEW,
        *,
        purpose: str | None = None,
    ) -> PatientRef:
        """Allow or refuse direct access to one study; returns its patient for the audit record.

        Raises NotVisible (a NotFound: the protocols' usual 404) alike for an unknown study and
        for a study of a patient the caller has no relationship with, so no answer tells
        whether a UID exists; the refusal is audited.
        """
        if not self.permits(principal, Permission.READ):
            self.require(principal, Permission.READ, f"{AuditAction(action).value} of patient data")
        with self._index.read() as conn:
            r = conn.execute(
                select(
                    t.patient.c.pk, t.patient.c.issuer, t.patient.c.local_id, t.patient.c.nhs_number
                )
                .select_from(t.study.join(t.patient, t.study.c.patient_pk == t.patient.c.pk))
                .where(t.study.c.study_uid == study_uid)
            ).first()
        if r is None:
            raise self.not_found(principal, f"study {study_uid}")
        if not self._patient_visible(principal, int(r.pk)):
            raise self._deny(
                principal, patient=None, study_uid=study_uid, action=action, purpose=purpose
            )
        return PatientRef(r.issuer, r.local_id, r.nhs_number)

    def check_patient(
        self,
        principal: Principal,
        issuer: str,
        local_id: str,
        action: AuditAction | str = AuditAction.VIEW,
        *,
        purpose: str | None = None,
    ) -> PatientRef:
        if not self.permits(principal, Permission.READ):
            self.require(principal, Permission.READ, f"{AuditAction(action).value} of patient data")
        r = self._find_patient(issuer, local_id)
        if r is None:
            raise self.not_found(principal, "patient")
        if not self._patient_visible(principal, int(r[0])):
            raise self._deny(
                principal, patient=None, study_uid=None, action=action, purpose=purpose
            )
        return r[1]

    def _find_patient(self, issuer: str, local_id: str) -> tuple[int, PatientRef] | None:
        p = t.patient.c
        with self._index.read() as conn:
            r = conn.execute(
                select(p.pk, p.issuer, p.local_id, p.nhs_number).where(
                    p.issuer == issuer, p.local_id == local_id
                )
            ).first()
        return (int(r.pk), PatientRef(r.issuer, r.local_id, r.nhs_number)) if r else None

    # -- break-glass -----------------------------------------------------------------------

    def break_glass(
        self,
        principal: Principal,
        *,
        reason_code: str,
        reason_text: str,
        study_uid: str | None = None,
        issuer: str | None = None,
        local_id: str | None = None,
    ) -> Grant:
        """Time-limited access to one patient for this user; audited, flagged for review."""
        self.require(principal, Permission.BREAK_GLASS, "break-glass access")
        if principal.kind is not PrincipalKind.USER:
            raise AccessDenied("break-glass is for people; nodes use registered relationships")
        if reason_code not in BREAK_GLASS_REASONS:
            raise InvalidInput(
                f"reason must be one of {', '.join(BREAK_GLASS_REASONS)} (with an explanation)"
            )
        text = reason_text.strip()
        if len(text) < 10 or len(text) > 2000:
            raise InvalidInput("explain the reason in 10 to 2000 characters")
        found: tuple[int, PatientRef] | None = None
        if study_uid:
            p, s = t.patient.c, t.study.c
            with self._index.read() as conn:
                r = conn.execute(
                    select(p.pk, p.issuer, p.local_id, p.nhs_number)
                    .select_from(t.study.join(t.patient, s.patient_pk == p.pk))
                    .where(s.study_uid == study_uid)
                ).first()
            found = (int(r.pk), PatientRef(r.issuer, r.local_id, r.nhs_number)) if r else None
        elif issuer and local_id:
            found = self._find_patient(issuer, local_id)
        else:
            raise InvalidInput("name the study (study_uid) or the patient (issuer and patient_id)")
        if found is None:
            raise NotFound("no such study or patient record")
        patient_pk, patient = found
        expires = datetime.now(UTC) + timedelta(minutes=self.break_glass_minutes)

        def op(conn: Any) -> int:
            grant_id = sec.add_grant(
                conn, principal.name, principal.trust, patient_pk, reason_code, text, expires
            )
            fields = audit_fields(
                principal,
                AuditAction.BREAK_GLASS,
                AuditOutcome.SUCCESS,
                patient=patient,
                study_uid=study_uid,
                purpose=f"break-glass:{reason_code}",
                detail={
                    "priority": "high",
                    "grant": grant_id,
                    "reason": reason_code,
                    "text": text,
                    "expires_at": expires.isoformat(),
                    "review": "pending",
                },
            )
            AuditTrail.append_in(conn, fields)
            return grant_id

        grant_id = self._index.write(op)
        # The privacy officer's notification: a WARNING every log pipeline forwards.
        log.warning(
            "break-glass access granted; review required",
            extra={"grant": grant_id, "user": principal.name, "trust": principal.trust},
        )
        return Grant(
            grant_id,
            patient,
            expires,
            "Break-glass access is recorded and will be reviewed by the Caldicott/privacy "
            f"function of each trust involved. Access ends at {expires.isoformat()}.",
        )

    def audited_trusts(self, principal: Principal) -> frozenset[str] | None:
        """Whose part of the audit trail an auditor reads: None (all of it) for the operator
        and any caller without a trust limit, else the trusts of their scope (an auditor for
        the whole region holds every trust). A trust's privacy function reads
        what concerns its patients and its own staff and nodes, never another trust's
        patients as such (issue 11: what the caller may not see answers like nothing)."""
        scope = self.scope(principal)
        if scope.unrestricted or principal.trust is None:
            return None
        return scope.trusts

    def grants(
        self, principal: Principal, *, unreviewed_only: bool = False, limit: int = 100
    ) -> list[sec.GrantRow]:
        """Auditors see the grants involving their trusts (every grant: a regional auditor);
        anyone else sees their own."""
        if self.permits(principal, Permission.AUDIT):
            return sec.list_grants(
                self._index,
                unreviewed_only=unreviewed_only,
                limit=limit,
                trusts=self.audited_trusts(principal),
            )
        return sec.list_grants(
            self._index, unreviewed_only=unreviewed_only, user_name=principal.name, limit=limit
        )

    def review(self, principal: Principal, grant_id: int, note: str) -> None:
        self.require(principal, Permission.AUDIT, "reviewing break-glass access")
        trusts = self.audited_trusts(principal)

        def op(conn: Any) -> None:
            if not sec.review_grant(conn, grant_id, principal.name, note, trusts):
                raise NotFound(f"no unreviewed break-glass grant {grant_id}")
            AuditTrail.append_in(
                conn,
                audit_fields(
                    principal,
                    AuditAction.AUDIT_LOG_USED,
                    detail={"reviewed_grant": grant_id, "note": note},
                ),
            )

        self._index.write(op)
