"""Regional record reads for FHIR, IHE IID and the identity API: the one door to them.

Every method takes the caller, keeps only the records the one access rule lets them see, and
writes one audit record naming the patient. What the caller may not see answers exactly like
what does not exist (``NotVisible``), so no search, count, redirect or error body tells another
trust's patients apart from nobody (issue 11). Adapters translate the plain dicts returned here
into their protocol; they never see a record the rule has not passed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from solent.domain import nhs_number as nhs
from solent.domain.principal import Principal
from solent.errors import InvalidInput
from solent.services.access import AccessService, NotVisible, Permission
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail, PatientRef
from solent.services.identity import IdentityService
from solent.services.inbox import InboxReads
from solent.services.query import QueryService


@dataclass(frozen=True, slots=True)
class Person:
    """The records of one person the caller may see, and the record the caller named."""

    pks: frozenset[int]
    ref: PatientRef
    #: The one record the request named (by local ID, retired ID or key); None for an NHS number.
    named_pk: int | None = None


#: Work-item kinds whose detail names records of other trusts (a demographic conflict names
#: the other holder of the NHS number, its local ID and the attribute that differs). Shown
#: only to a caller who may see every record carrying that number: to anyone else the item
#: would tell that another trust holds the person (issue 11, "answers like nothing").
CROSS_TRUST_ITEMS = frozenset({"demographic-conflict"})


class RecordService:
    def __init__(
        self,
        identity: IdentityService,
        inbox: InboxReads,
        access: AccessService,
        audit: AuditTrail,
        query: QueryService,
    ) -> None:
        self._query = query
        self._identity = identity
        self._inbox = inbox
        self._access = access
        self._trail = audit

    # -- who is meant ------------------------------------------------------------------------

    def person(
        self,
        principal: Principal,
        *,
        nhs_number: str | None = None,
        issuer: str | None = None,
        local_id: str | None = None,
        patient_pk: int | None = None,
        action: AuditAction = AuditAction.QUERY,
    ) -> Person:
        """The visible records of the person named by NHS number, (issuer, local ID) or record
        key. Not audited here: the read that follows writes the one record naming them."""
        self._access.require(principal, Permission.READ, f"{action.value} of patient data")
        candidates: set[int]
        named: int | None = None
        if nhs_number is not None:
            number = nhs.normalise(nhs_number)
            if not nhs.is_valid(number):
                raise InvalidInput(f"{nhs_number!r} is not a valid NHS number (modulus 11)")
            # The group the number names; after an unlink (A37) or a demographic conflict,
            # the first group the caller may see (a ZZB clinician asking for the number of
            # ZZB's own record gets that record, not ZZA's unlinked one, nor nothing).
            groups = self._identity.groups_by_nhs_number(number)
            candidates = next(
                (g for g in groups if self._access.visible_among(principal, g)),
                groups[0] if groups else set(),
            )
        elif patient_pk is not None:
            named = patient_pk
            candidates = (
                self._identity.linked_patient_pks(patient_pk)
                if self._access.visible_among(principal, [patient_pk])
                else set()
            )
        elif issuer and local_id:
            found = self._identity.resolve(issuer, local_id)
            candidates = set()
            named = found.patient_pk if found is not None else None
            if found is not None and self._access.visible_among(principal, [found.patient_pk]):
                candidates = self._identity.linked_patient_pks(found.patient_pk)
        else:
            raise InvalidInput("name the patient: an NHS number, or a local ID with its issuer")
        visible = self._access.visible_among(principal, candidates)
        if not visible:
            if candidates:
                self._trail.record(
                    principal,
                    AuditAction.PERMISSION_DENIED,
                    AuditOutcome.DENIED,
                    patient=self._ref_of(candidates, nhs_number),
                    detail={"attempted": action.value},
                )
            raise self._access.not_found(principal, "patient")
        ref = self._ref_of(visible, nhs_number, issuer, local_id)
        return Person(frozenset(visible), ref, named)

    def _ref_of(
        self,
        pks: Iterable[int],
        number: str | None = None,
        issuer: str | None = None,
        local_id: str | None = None,
    ) -> PatientRef:
        """The record to name in the audit trail: the one asked for, else the oldest."""
        rows = [r["record"] for r in (self._identity.record(pk) for pk in sorted(pks)) if r]
        named = next(
            (r for r in rows if (r["issuer"], r["local_id"]) == (issuer, local_id)),
            rows[0] if rows else None,
        )
        if named is None:
            n = nhs.normalise(number or "")
            return PatientRef(nhs.NHS_ISSUER, n, n)
        return PatientRef(named["issuer"], named["local_id"], named["nhs_number"] or number)

    def _audit(
        self,
        principal: Principal,
        person: Person,
        what: str,
        *,
        action: AuditAction = AuditAction.QUERY,
        **detail: Any,
    ) -> None:
        self._trail.record(
            principal,
            action,
            patient=person.ref,
            detail={"read": what, "records": len(person.pks), **detail},
        )

    # -- the JSON API's patient and study lists -----------------------------------------------

    def patient_list(self, principal: Principal, *, limit: int, offset: int) -> list[Any]:
        """Patients the caller may see, one audit record for the query."""
        self._access.require(principal, Permission.READ, "listing patients")
        rows = self._query.list_patients(principal, limit=limit, offset=offset)
        self._trail.record(
            principal, AuditAction.QUERY, detail={"api": "patients", "results": len(rows)}
        )
        return rows

    def study_list(
        self,
        principal: Principal,
        *,
        nhs_number: str | None,
        issuer: str | None,
        local_id: str | None,
        limit: int,
        offset: int,
    ) -> list[Any]:
        """Studies the caller may see, by patient; the audit record names the patient asked
        for when the request names one."""
        self._access.require(principal, Permission.READ, "searching studies")
        rows = self._query.list_studies(
            principal,
            nhs_number=nhs_number,
            issuer=issuer,
            local_id=local_id,
            limit=limit,
            offset=offset,
        )
        patient = PatientRef(issuer, local_id, nhs_number) if issuer and local_id else None
        if patient is None and nhs_number:
            patient = PatientRef(nhs.NHS_ISSUER, nhs_number, nhs_number)
        self._trail.record(
            principal,
            AuditAction.QUERY,
            patient=patient,
            detail={"api": "studies", "results": len(rows)},
        )
        return rows

    def study_detail(
        self, principal: Principal, study_uid: str, *, purpose: str | None = None
    ) -> Any:
        """One study with its patient; unknown and not visible answer alike."""
        patient = self._access.check_study(principal, study_uid, AuditAction.VIEW, purpose=purpose)
        rows = self._query.list_studies(
            principal, issuer=patient.issuer, local_id=patient.local_id, limit=1000
        )
        found = next((r for r in rows if r["study_uid"] == study_uid), None)
        if found is None:  # removed between the check and the read
            raise self._access.not_found(principal, f"study {study_uid}")
        self._trail.record(
            principal, AuditAction.VIEW, patient=patient, study_uid=study_uid, purpose=purpose
        )
        return found

    # -- identity API --------------------------------------------------------------------------

    def person_view(self, principal: Principal, person: Person) -> dict[str, Any]:
        """Everything held on the person that the caller may see, with reports and orders."""
        view = self._identity.person(person.pks)
        view["work_items"] = [
            i for i in view["work_items"] if self._names_only_visible_records(principal, i)
        ]
        view["studies"] = [self._with_reports(s) for s in view["studies"]]
        idents = [(r["issuer"], r["local_id"]) for r in view["records"]]
        view["orders"] = self._inbox.orders(idents)
        self._audit(principal, person, "identity/person", studies=len(view["studies"]))
        return view

    def _with_reports(self, study: dict[str, Any]) -> dict[str, Any]:
        issuer = study["accession_issuer"] or study["trust_code"]
        accession = study["accession_number"]
        return {**study, "reports": self._inbox.reports(accession, issuer) if accession else []}

    def links(self, principal: Principal, issuer: str, local_id: str) -> list[dict[str, Any]]:
        person = self.person(principal, issuer=issuer, local_id=local_id)
        assert person.named_pk is not None  # named by (issuer, local ID) and visible
        out = self._identity.links_of(person.named_pk)
        self._audit(principal, person, "identity/links", action=AuditAction.VIEW)
        return out

    def history(self, principal: Principal, issuer: str, local_id: str) -> list[dict[str, Any]]:
        person = self.person(principal, issuer=issuer, local_id=local_id)
        assert person.named_pk is not None  # named by (issuer, local ID) and visible
        out = self._identity.history(person.named_pk)
        self._audit(principal, person, "identity/history", action=AuditAction.VIEW)
        return out

    # -- patients and studies (FHIR, IID) ------------------------------------------------------

    def patient_records(
        self,
        principal: Principal,
        person: Person,
        *,
        named_only: bool = False,
        what: str = "patient",
    ) -> list[dict[str, Any]]:
        """The visible records of a person, each with retired IDs, links and contact; with
        ``named_only``, the record the request named (FHIR Patient?identifier=), or for an NHS
        number the records carrying it."""
        out = []
        for pk in sorted(person.pks):
            if named_only and person.named_pk is not None and pk != person.named_pk:
                continue
            found = self._identity.record(pk)
            if found is None:
                continue
            by_number = named_only and person.named_pk is None
            if by_number and found["record"]["nhs_number"] != person.ref.nhs_number:
                continue
            found["linked"] = [p for p in found["linked"] if p in person.pks]
            out.append(found)
        self._audit(principal, person, what, results=len(out))
        return out

    def patient_record(self, principal: Principal, patient_pk: int) -> dict[str, Any]:
        """One record by key (FHIR Patient/{id}), with only the links the caller may see."""
        person = self.person(principal, patient_pk=patient_pk)
        found = self._identity.record(patient_pk)
        if found is None:  # removed between the two reads
            raise self._access.not_found(principal, "patient")
        found["linked"] = [p for p in found["linked"] if p in person.pks]
        self._audit(principal, person, "patient", action=AuditAction.VIEW)
        return found

    def person_studies(
        self, principal: Principal, person: Person, what: str = "studies"
    ) -> list[dict[str, Any]]:
        """The person's studies the caller may see, newest first, each with its series."""
        studies = self._identity.studies(person.pks)
        out = [
            {
                **s,
                "series": self._identity.series(int(s["study_pk"])),
                "subject": self._identity.subject_seen_by(principal, s),
            }
            for s in studies
        ]
        self._audit(principal, person, what, results=len(out))
        return out

    def study(self, principal: Principal, study_pk: int) -> dict[str, Any]:
        """One study by key (FHIR ImagingStudy/{id}) with its series; audited as a view."""
        summary = self._identity.study_summary(study_pk)
        if summary is None:
            raise self._access.not_found(principal, "study")
        uid = summary["study_uid"]
        try:
            patient = self._access.check_study(principal, uid, AuditAction.VIEW)
        except NotVisible:
            raise self._access.not_found(principal, "study") from None
        self._trail.record(principal, AuditAction.VIEW, patient=patient, study_uid=uid)
        return {
            **summary,
            "series": self._identity.series(study_pk),
            "subject": self._identity.subject_seen_by(principal, summary),
        }

    def studies_by_uid_or_accession(
        self,
        principal: Principal,
        *,
        study_uids: Iterable[str] = (),
        accession: tuple[str, str] | None = None,
        trust: str | None = None,
        action: AuditAction = AuditAction.QUERY,
        with_series: bool = False,
        of_person: Person | None = None,
    ) -> list[dict[str, Any]]:
        """Visible studies named by UID (at ``trust`` when given) or by (accession, issuer);
        one audit record per study returned. ``of_person``: only studies filed under that
        person's records (an EPR launch naming the patient as well as the study: a study of
        anyone else is left out, never shown nor audited as viewed)."""
        self._access.require(principal, Permission.READ, f"{action.value} of patient data")
        rows: list[dict[str, Any]] = []
        for uid in study_uids:
            row = self._identity.study(uid)
            if row is not None and (trust is None or row["trust_code"] == trust):
                rows.append(row)
        if accession is not None:
            rows += self._identity.studies_by_accession(*accession)
        visible = self._access.visible_among(principal, {int(r["patient_pk"]) for r in rows})
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for row in rows:
            if int(row["patient_pk"]) not in visible or row["study_uid"] in seen:
                continue
            if of_person is not None and int(row["patient_pk"]) not in of_person.pks:
                continue
            seen.add(row["study_uid"])
            summary = self._identity.study_summary(int(row["pk"]))
            if summary is None:
                continue
            if with_series:
                summary = {
                    **summary,
                    "series": self._identity.series(int(row["pk"])),
                    "subject": self._identity.subject_seen_by(principal, summary),
                }
            out.append(summary)
            self._trail.record(
                principal,
                action,
                patient=PatientRef(summary["issuer"], summary["local_id"], summary["nhs_number"]),
                study_uid=row["study_uid"],
            )
        out.sort(key=lambda s: (s["study_date"] or "", s["study_time"] or ""), reverse=True)
        return out

    # -- reports -------------------------------------------------------------------------------

    def person_reports(self, principal: Principal, person: Person) -> list[dict[str, Any]]:
        """Current versions of the reports of the person's visible studies."""
        out = []
        for s in self._identity.studies(person.pks):
            if not s["accession_number"]:
                continue
            issuer = s["accession_issuer"] or s["trust_code"]
            for r in self._inbox.reports(s["accession_number"], issuer):
                if not r["superseded"]:
                    out.append({"report": r, "study": s})
        self._audit(principal, person, "reports", results=len(out))
        return out

    def _report_visible(self, principal: Principal, report: dict[str, Any]) -> PatientRef | None:
        """A report is visible when its study's patient is, or (no study yet) the patient the
        report names is; None otherwise."""
        studies = self._identity.studies_by_accession(
            report["accession_number"], report["accession_issuer"]
        )
        pks = {int(s["patient_pk"]) for s in studies}
        if not studies and report["patient_issuer"] and report["patient_id"]:
            found = self._identity.resolve(report["patient_issuer"], report["patient_id"])
            pks = {found.patient_pk} if found else set()
        if not self._access.visible_among(principal, pks):
            return None
        return PatientRef(report["patient_issuer"] or "", report["patient_id"] or "")

    def report(self, principal: Principal, report_pk: int) -> dict[str, Any]:
        """One report version (FHIR DiagnosticReport/{id}) with its study, if any."""
        self._access.require(principal, Permission.READ, "reading a report")
        report = self._inbox.report(report_pk)
        patient = self._report_visible(principal, report) if report else None
        if report is None or patient is None:
            raise self._access.not_found(principal, "report")
        studies = self._identity.studies_by_accession(
            report["accession_number"], report["accession_issuer"]
        )
        study = studies[0] if studies else None
        self._trail.record(
            principal,
            AuditAction.VIEW,
            patient=patient,
            study_uid=study["study_uid"] if study else None,
            detail={"report": report_pk},
        )
        return {"report": report, "study": study}

    def report_versions(
        self, principal: Principal, accession: str, issuer: str
    ) -> list[dict[str, Any]]:
        """Every version of the report for (accession, issuer), oldest first."""
        self._access.require(principal, Permission.READ, "reading reports")
        versions = self._inbox.reports(accession, issuer)
        patient = self._report_visible(principal, versions[-1]) if versions else None
        if patient is None:
            raise self._access.not_found(principal, "report")
        self._trail.record(
            principal,
            AuditAction.VIEW,
            patient=patient,
            detail={"reports": f"{accession}/{issuer}", "versions": len(versions)},
        )
        return versions

    def unmatched_reports(self, principal: Principal) -> list[dict[str, Any]]:
        """Reports that name no stored study yet, limited to patients the caller may see."""
        self._access.require(principal, Permission.READ, "reading unmatched reports")
        out = [r for r in self._inbox.unmatched_reports() if self._report_visible(principal, r)]
        for r in out:
            self._trail.record(
                principal,
                AuditAction.QUERY,
                patient=PatientRef(r["patient_issuer"] or "", r["patient_id"] or ""),
                detail={"read": "reports/unmatched", "report": r["pk"]},
            )
        return out

    # -- work queue and the HL7 journal --------------------------------------------------------

    def work_queue(self, principal: Principal, *, status: str | None) -> list[dict[str, Any]]:
        """Identity conflicts: readers see items about patients they may see; a trust's
        administrator those raised at their trust (a regional administrator, every item)."""
        items = self._identity.work_queue(status=status)
        admin = self._access.permits(principal, Permission.ADMIN)
        reader = self._access.permits(principal, Permission.READ)
        if not (admin or reader):
            self._access.require(principal, Permission.READ, "viewing the data-quality queue")
        scope = self._access.scope(principal)
        pks = {int(i["patient_pk"]) for i in items if i["patient_pk"] is not None}
        visible = self._access.visible_among(principal, pks) if reader else set()

        def shown(item: dict[str, Any]) -> bool:
            if admin and (principal.trust is None or item["issuer"] in scope.trusts):
                return True
            if not reader:
                return False
            if item["patient_pk"] is not None:
                return int(item["patient_pk"]) in visible
            return scope.unrestricted or item["issuer"] in scope.trusts

        out = [i for i in items if shown(i) and self._names_only_visible_records(principal, i)]
        for item in out:
            self._trail.record(
                principal,
                AuditAction.QUERY,
                patient=PatientRef(item["issuer"] or "", item["local_id"] or "", item["nhs_number"])
                if item["local_id"]
                else None,
                detail={"read": "data-quality", "item": item["pk"]},
            )
        return out

    def _names_only_visible_records(self, principal: Principal, item: dict[str, Any]) -> bool:
        """False for an item of ``CROSS_TRUST_ITEMS`` unless the caller is regional (no trust
        limit) or may see every record that carries the item's NHS number."""
        if item["kind"] not in CROSS_TRUST_ITEMS:
            return True
        if self._access.scope(principal).unrestricted or (
            principal.trust is None and self._access.permits(principal, Permission.ADMIN)
        ):
            return True
        number = item["nhs_number"]
        holders = set(self._identity.records_by_nhs_number(number)) if number else set()
        if item["patient_pk"] is not None:
            holders.add(int(item["patient_pk"]))
        return bool(holders) and self._access.visible_among(principal, holders) == holders

    def hl7_messages(
        self, principal: Principal, *, status: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """Raw HL7 messages (patient data): administrators only, their trust's senders only
        (a regional administrator: all), filtered in the query so ``limit`` counts what the
        caller may see; the read is audited once per patient the messages name."""
        self._access.require(principal, Permission.ADMIN, "reading the HL7 journal")
        facilities = None if principal.trust is None else self._access.scope(principal).trusts
        rows = self._inbox.messages(status=status, limit=limit, facilities=facilities)
        patients = [p for r in rows for p in patients_in_hl7(str(r["raw"]))]
        self._trail.record_patients(
            principal,
            AuditAction.QUERY,
            patients,
            detail={
                "read": "hl7/messages",
                "status": status,
                "messages": [r["pk"] for r in rows],
            },
        )
        return rows


_NHS_AUTHORITIES = ("NHS", "2.16.840.1.113883.2.1.4.1")


def patients_in_hl7(raw: str) -> list[PatientRef]:
    """The patient records an ER7 message names (PID-3 and MRG-1 identifiers with their
    assigning authority; the NHS number of the PID rides along), for the audit record of a
    read of raw messages. A message too broken to say names nobody."""
    text = raw.replace("\r\n", "\r").replace("\n", "\r")
    if not text.startswith("MSH") or len(text) < 8:
        return []
    field_sep, comp, rep, sub = text[3], text[4], text[5], text[7]
    out: list[PatientRef] = []
    for line in text.split("\r"):
        fields = line.split(field_sep)
        n = {"PID": 3, "MRG": 1}.get(fields[0])
        if n is None or len(fields) <= n:
            continue
        local: list[tuple[str, str]] = []
        nhs_number = None
        for cx in fields[n].split(rep):
            parts = (cx.split(comp) + [""] * 5)[:5]
            namespace, universal = ([*parts[3].split(sub), ""])[:2]
            authority = namespace or universal
            if not parts[0]:
                continue
            if authority in _NHS_AUTHORITIES or parts[4] == "NH":
                nhs_number = parts[0]
            elif authority:
                local.append((authority, parts[0]))
        out += [PatientRef(issuer, local_id, nhs_number) for issuer, local_id in local]
    return out
