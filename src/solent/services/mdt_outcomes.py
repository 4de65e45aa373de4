"""MDT outcomes (R32): the radiology input to an MDT recorded against the studies reviewed
(opinion, plan, the studies and series reviewed, by whom, when), and a discrepancy with a
study's original report flagged to that report's primary reporter at the trust that reported it
(who reads the notice through services/reporter_notices.py).

Why here and not on the meeting item: the outcome belongs to the studies as much as to the
meeting, so anyone who may see a reviewed study (at any trust) finds it from the study, and the
primary reporter (OBR-32 of the report in force) often works at another trust than the MDT
radiologist. A recording is never changed: a later one for the same item supersedes it in the
view, and every recording is kept.

Access: recording needs an MDT participant who may see the item's patient and the radiologist
role; a study or item the caller may not see answers like one that does not exist. Every
recording and read leaves an audit record naming the patient; those made for a meeting carry
``mdt:<id>`` as their purpose.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from solent.domain.principal import Principal
from solent.errors import InvalidInput
from solent.index import identity as records
from solent.index import mdt_outcomes as store
from solent.index.sql import Index
from solent.services.access import AccessDenied, AccessService, Permission, Role
from solent.services.audit import AuditAction, AuditTrail, PatientRef, audit_fields
from solent.services.identity import IdentityService
from solent.services.mdt import MdtService
from solent.services.mdt_schedule import purpose
from solent.services.viewer import ViewerService, iso, report_key

MAX_TEXT = 10_000
MAX_REVIEWED = 20
MAX_SERIES = 200


@dataclass(frozen=True, slots=True)
class Reviewed:
    """A study reviewed at the MDT, and which of its series (none: the study as a whole)."""

    study_uid: str
    series_uids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NewOutcome:
    opinion: str
    plan: str
    reviewed: tuple[Reviewed, ...]
    discrepancy: bool = False
    discrepancy_note: str = ""


@dataclass(frozen=True, slots=True)
class SupplementaryReport:
    """An outcome as a supplementary report: its subject and the studies it references."""

    outcome: dict[str, Any]
    patient_pk: int  # the record of the first reviewed study the caller may see
    study_pks: tuple[int, ...]
    patient: PatientRef


class MdtOutcomeService:
    def __init__(
        self,
        index: Index,
        access: AccessService,
        audit: AuditTrail,
        mdt: MdtService,
        viewer: ViewerService,
        identity: IdentityService,
    ) -> None:
        self._identity = identity  # never handed out: adapters get this service only
        self._index = index
        self._access = access
        self._audit = audit
        self._mdt = mdt
        self._viewer = viewer

    # -- recording ------------------------------------------------------------------------

    def record(
        self, principal: Principal, meeting_id: int, item_id: int, outcome: NewOutcome
    ) -> dict[str, Any]:
        """Record the radiology input for an item; with ``discrepancy``, one notice per
        reviewed study's report in force, addressed to its primary reporter at its trust."""
        seen = self._mdt.seen_item(principal, meeting_id, item_id)
        if Role.RADIOLOGIST.value not in principal.roles:
            self._refuse(principal)
        _check_text(outcome)
        reviewed = self._reviewed(outcome.reviewed, set(seen.study_uids))
        notices = self._notices(outcome, reviewed) if outcome.discrepancy else []
        if outcome.discrepancy and not notices:
            raise InvalidInput(
                "a discrepancy is with a study's report: none of the studies reviewed has one"
            )
        why = purpose(meeting_id)
        patient = seen.ref()

        def op(conn: Any) -> int:
            pk = store.add_outcome(
                conn,
                {
                    "meeting_pk": meeting_id,
                    "item_pk": item_id,
                    "patient_issuer": seen.item["patient_issuer"],
                    "patient_id": seen.item["patient_id"],
                    "opinion": outcome.opinion,
                    "plan": outcome.plan,
                    "discrepancy": outcome.discrepancy,
                    "discrepancy_note": outcome.discrepancy_note or None,
                    "recorded_by": principal.name,
                    "recorded_trust": principal.trust,
                },
                [(r.study_uid, list(r.series_uids)) for r in reviewed],
            )
            AuditTrail.append_in(
                conn,
                audit_fields(
                    principal,
                    AuditAction.PATIENT_RECORD,
                    patient=patient,
                    study_uid=reviewed[0].study_uid,
                    purpose=why,
                    detail={
                        "mdt": "outcome recorded",
                        "item": item_id,
                        "outcome": pk,
                        "studies": [r.study_uid for r in reviewed],
                        "discrepancy": outcome.discrepancy,
                    },
                ),
            )
            for notice, study_patient in notices:
                notice_pk = store.add_notice(conn, {**notice, "outcome_pk": pk})
                AuditTrail.append_in(
                    conn,
                    audit_fields(
                        principal,
                        AuditAction.PATIENT_RECORD,
                        patient=study_patient,
                        study_uid=notice["study_uid"],
                        purpose=why,
                        detail={
                            "mdt": "discrepancy flagged to the primary reporter",
                            "notice": notice_pk,
                            "trust": notice["trust"],
                            "reporter": notice["reporter_id"] or notice["reporter_name"],
                        },
                    ),
                )
                self._index.append_event(
                    conn,
                    "report.discrepancy",
                    principal,
                    trust_code=notice["trust"],
                    study_uid=notice["study_uid"],
                    detail={"notice": notice_pk, "accession": notice["accession_number"]},
                )
            return pk

        pk = self._index.write(op)
        with self._index.read() as conn:
            rows = store.outcomes(conn, item=item_id)
        return _outcome_json(next(r for r in rows if int(r["pk"]) == pk), set(seen.study_uids))

    def _refuse(self, principal: Principal) -> None:
        self._audit.record(
            principal,
            AuditAction.PERMISSION_DENIED,
            "denied",
            detail={"what": "recording the radiology input to an MDT"},
        )
        mine = ", ".join(sorted(principal.roles)) or "none"
        raise AccessDenied(
            f"your role ({mine}) does not allow recording the radiology input to an MDT; "
            f"roles that do: {Role.RADIOLOGIST.value}"
        )

    def _reviewed(self, reviewed: Sequence[Reviewed], listed: set[str]) -> list[Reviewed]:
        """The studies reviewed, each one of the item's (visible) studies, each series one of
        its own; duplicates merged, order kept."""
        if not reviewed:
            raise InvalidInput("name at least one study reviewed")
        if len(reviewed) > MAX_REVIEWED:
            raise InvalidInput(f"at most {MAX_REVIEWED} studies reviewed per outcome")
        merged: dict[str, list[str]] = {}
        for r in reviewed:
            if r.study_uid not in listed:
                raise InvalidInput(f"study {r.study_uid} is not one of this item's studies")
            if len(r.series_uids) > MAX_SERIES:
                raise InvalidInput(f"at most {MAX_SERIES} series per study reviewed")
            merged.setdefault(r.study_uid, [])
            if r.series_uids:
                row = self._identity.study(r.study_uid)
                own = (
                    {s["series_uid"] for s in self._identity.series(int(row["pk"]))}
                    if row
                    else set()
                )
                for uid in r.series_uids:
                    if uid not in own:
                        raise InvalidInput(f"series {uid} is not a series of study {r.study_uid}")
                    if uid not in merged[r.study_uid]:
                        merged[r.study_uid].append(uid)
        return [Reviewed(uid, tuple(series)) for uid, series in merged.items()]

    def _notices(
        self, outcome: NewOutcome, reviewed: list[Reviewed]
    ) -> list[tuple[dict[str, Any], PatientRef]]:
        """One notice per reviewed study with a report in force: to its primary reporter."""
        out: list[tuple[dict[str, Any], PatientRef]] = []
        for r in reviewed:
            row = self._identity.study(r.study_uid)
            if row is None or not row["accession_number"]:
                continue
            accession, issuer = report_key(row)
            with self._index.read() as conn:
                report = store.current_report(conn, accession, issuer)
                owner = _study_patient(conn, int(row["patient_pk"]))
            if report is None:
                continue
            reporter_id = report.get("interpreter_id")
            out.append(
                (
                    {
                        "trust": issuer,
                        "reporter_id": str(reporter_id).lower() if reporter_id else None,
                        "reporter_name": report["interpreter"],
                        "study_uid": r.study_uid,
                        "accession_number": accession,
                        "report_version": int(report["version"]),
                    },
                    owner,
                )
            )
        return out

    # -- reading ----------------------------------------------------------------------------

    def for_item(self, principal: Principal, meeting_id: int, item_id: int) -> dict[str, Any]:
        """The recordings for a meeting item, newest last (the last is in force)."""
        seen = self._mdt.seen_item(principal, meeting_id, item_id)
        with self._index.read() as conn:
            rows = store.outcomes(conn, item=item_id)
        self._audit.record(
            principal,
            AuditAction.VIEW,
            patient=seen.ref(),
            purpose=purpose(meeting_id),
            detail={"api": "mdt outcomes", "item": item_id, "results": len(rows)},
        )
        return {"outcomes": [_outcome_json(r, set(seen.study_uids)) for r in rows]}

    def for_study(self, principal: Principal, study_uid: str) -> dict[str, Any]:
        """The MDT outcomes recorded against a study, for anyone who may see the study (any
        trust); other studies an outcome reviewed are listed only when the caller sees them."""
        patient = self._viewer.check_study(principal, study_uid, "viewer mdt outcomes")
        with self._index.read() as conn:
            rows = store.outcomes(conn, study_uids=[study_uid])
        listed = {uid for r in rows for uid, _ in r["reviewed"]}
        visible = self._access.visible_study_uids(principal, listed)
        self._audit.record(
            principal,
            AuditAction.VIEW,
            patient=patient,
            study_uid=study_uid,
            detail={"api": "viewer mdt outcomes", "results": len(rows)},
        )
        return {"outcomes": [_outcome_json(r, visible) for r in rows]}

    # -- FHIR: the outcome as a supplementary DiagnosticReport ---------------------------------

    def supplementary(self, principal: Principal, outcome_id: int) -> SupplementaryReport:
        """One outcome with the reviewed studies the caller may see; NotFound (like an unknown
        one) when they may see none of them. One ``view`` record naming the patient."""
        self._access.require(principal, Permission.READ, "reading an MDT outcome")
        with self._index.read() as conn:
            rows = store.outcomes(conn, pk=outcome_id)
        found = self._supplementary(principal, rows)
        if not found:
            raise self._access.not_found(principal, "MDT outcome")
        report = found[0]
        self._audit.record(
            principal,
            AuditAction.VIEW,
            patient=report.patient,
            study_uid=report.outcome["reviewed"][0]["study_uid"],
            detail={"api": "fhir mdt outcome", "outcome": outcome_id},
        )
        return report

    def of_person(
        self, principal: Principal, patient_pks: Collection[int]
    ) -> list[SupplementaryReport]:
        """The outcomes that reviewed studies of these (visible) records. One ``view`` record
        naming the first record's patient when there are any (none is disclosed otherwise)."""
        studies = self._identity.studies(patient_pks)
        if not studies:
            return []
        with self._index.read() as conn:
            rows = store.outcomes(conn, study_uids=[s["study_uid"] for s in studies])
        found = self._supplementary(principal, rows)
        if found:
            self._audit.record(
                principal,
                AuditAction.VIEW,
                patient=found[0].patient,
                detail={"api": "fhir mdt outcomes", "outcomes": [r.outcome["id"] for r in found]},
            )
        return found

    def _supplementary(
        self, principal: Principal, rows: list[dict[str, Any]]
    ) -> list[SupplementaryReport]:
        listed = {uid for r in rows for uid, _ in r["reviewed"]}
        visible = self._access.visible_study_uids(principal, listed)
        out = []
        for row in rows:
            outcome = _outcome_json(row, visible)
            if not outcome["reviewed"]:
                continue
            keys = []
            for entry in outcome["reviewed"]:
                study = self._identity.study(entry["study_uid"])
                if study is not None:
                    keys.append((int(study["pk"]), int(study["patient_pk"])))
            if not keys:
                continue
            with self._index.read() as conn:
                patient = _study_patient(conn, keys[0][1])
            out.append(SupplementaryReport(outcome, keys[0][1], tuple(k for k, _ in keys), patient))
        return out


def _check_text(outcome: NewOutcome) -> None:
    if not outcome.opinion.strip():
        raise InvalidInput("the opinion is empty")
    for name in ("opinion", "plan", "discrepancy_note"):
        if len(getattr(outcome, name)) > MAX_TEXT:
            raise InvalidInput(f"the {name.replace('_', ' ')} is longer than {MAX_TEXT} characters")
    if outcome.discrepancy and not outcome.discrepancy_note.strip():
        raise InvalidInput("say what the discrepancy with the report is (discrepancy_note)")
    if not outcome.discrepancy and outcome.discrepancy_note.strip():
        raise InvalidInput("a discrepancy note needs discrepancy set")


def _study_patient(conn: Any, patient_pk: int) -> PatientRef:
    p = records.get_patients(conn, {patient_pk})[0]
    return PatientRef(p["issuer"], p["local_id"], p["nhs_number"])


def _outcome_json(row: dict[str, Any], visible: set[str]) -> dict[str, Any]:
    return {
        "id": int(row["pk"]),
        "meeting_id": int(row["meeting_pk"]),
        "item_id": int(row["item_pk"]),
        "opinion": row["opinion"],
        "plan": row["plan"],
        "reviewed": [
            {"study_uid": uid, "series_uids": series}
            for uid, series in row["reviewed"]
            if uid in visible
        ],
        "discrepancy": bool(row["discrepancy"]),
        "discrepancy_note": row["discrepancy_note"],
        "by": row["recorded_by"],
        "trust": row["recorded_trust"],
        "at": iso(row["recorded_at"]),
        "notices": [
            {
                "id": int(n["pk"]),
                "trust": n["trust"],
                "reporter": n["reporter_name"] or n["reporter_id"],
                "status": n["status"],
                "acknowledged_by": n["acknowledged_by"],
                "response": n["response"],
            }
            for n in row["notices"]
            if n["study_uid"] in visible
        ],
    }
