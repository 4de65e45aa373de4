"""The retention date of each study (R42): computed, explained, and the expired ones listed for
a records manager to propose for deletion through the two-person flow (R44).

Nothing is stored about the date itself: it is computed on demand from what the index holds
now, so a new study of the person at any trust, a death ADT reports, or a link or merge of
records changes it at once. The inputs:

* the person: the study's record and every record linked to it at any trust (the one link
  rule, ``solent.services.identity``), so one trust's rule never deletes what another trust
  still needs;
* last contact: the latest study date among those records' studies (a study without a date
  counts from when it was received), and the latest visit ADT reported (A01/A03/A04);
* age at last contact from the latest date of birth those records carry (the younger age
  keeps longer); none: the study is kept as a child's would be;
* the date of death (PID-29), the latest any record carries;
* pathway flags a records manager set on the study or on any of the person's records (or an
  identifier of theirs since merged away or renumbered); a study with modality MG or "screen"
  in its description counts as screening without one (a screening rule only lengthens);
* legal holds (R43): a held study is shown with its date, never listed as expired.

Nothing is deleted here: ``propose`` keeps a retention deletion (IOCM 113039) per study, which
a second records manager approves or refuses (``solent.services.retention``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Protocol

from pydicom.uid import generate_uid
from sqlalchemy import Connection

from solent.domain import retention_rules as rules
from solent.domain.principal import Principal, PrincipalKind
from solent.domain.uids import is_valid_uid
from solent.errors import InvalidInput, NotFound
from solent.index import retention as holds_store
from solent.index import retention_schedule as store
from solent.index.sql import Index
from solent.services.access import AccessDenied, AccessService, Permission
from solent.services.audit import AuditAction, AuditTrail, PatientRef, audit_fields
from solent.services.retention import RetentionConflict, checked_text, deletion_view

_SCREENING_WORDS = re.compile(r"screen", re.IGNORECASE)
RETENTION_EXPIRED = "113039"


@dataclass(frozen=True, slots=True)
class _Person:
    keys: list[tuple[str, str]]  # (issuer, local ID) of each record of the person
    contacts: list[tuple[date, str]]  # (date, what and where) of each record's latest contact
    birth_date: date | None
    death_date: date | None
    flags: list[dict[str, Any]]  # pathway flags on the records (or their retired identifiers)
    holds: list[dict[str, Any]]  # legal holds on the records, retired identifiers, NHS numbers


class PersonLinks(Protocol):
    """The one link rule (``IdentityService``): each record with every record linked to it."""

    def components(self, conn: Connection, patient_pks: Iterable[int]) -> dict[int, set[int]]:
        """Each given record's component."""
        ...


def _day(value: object) -> date | None:
    """A DICOM/HL7 date (YYYYMMDD) or a datetime as a date; None when unreadable."""
    if isinstance(value, datetime):
        return value.date()
    text = str(value or "").strip()[:8]
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _since(value: object, today: date) -> str | None:
    """A flag's start date given as YYYY-MM-DD or YYYYMMDD, stored as YYYYMMDD: a day from
    1900 to today (a pathway counts from something that happened; 9999-12-31 made every read
    of the study's retention fail, 0001-01-01 was stored as an unreadable '10101')."""
    if value in (None, ""):
        return None
    text = str(value).replace("-", "")
    day = _day(text)
    if day is None or len(text) != 8:
        raise InvalidInput("since must be a date, YYYY-MM-DD")
    if not date(1900, 1, 1) <= day <= today:
        raise InvalidInput(f"since must be a day from 1900-01-01 to today ({today.isoformat()})")
    return day.isoformat().replace("-", "")


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None


def _flag_view(row: Mapping[str, Any]) -> dict[str, Any]:
    target = (
        {"study_uid": row["study_uid"]}
        if row["study_uid"]
        else {"issuer": row["issuer"], "patient_id": row["patient_id"]}
    )
    return {
        "id": int(row["pk"]),
        "kind": row["kind"],
        **target,
        "since": _iso(_day(row["since"])),
        "note": row["note"],
        "set_by": row["set_by"],
        "set_at": row["set_at"],
        "active": row["removed_at"] is None,
        "removed_by": row["removed_by"],
        "removed_at": row["removed_at"],
        "remove_reason": row["remove_reason"],
    }


class RetentionSchedule:
    def __init__(
        self,
        index: Index,
        access: AccessService,
        audit: AuditTrail,
        links: PersonLinks,
        policy: rules.Policy,
        clock: Callable[[], date] = lambda: datetime.now(UTC).date(),
    ) -> None:
        self._index = index
        self.clock = clock  # today's date (UTC): what "expired" is judged against
        self._access = access
        self._audit = audit
        self._links = links
        self.policy = policy

    # -- who may ----------------------------------------------------------------------------

    def _records_manager(self, principal: Principal, what: str) -> frozenset[str] | None:
        """Records managers (and the CLI on the server); returns the trusts whose records they
        see (None: every trust)."""
        self._access.require(principal, Permission.RETENTION, what)
        scope = self._access.scope(principal)
        return None if scope.unrestricted else scope.trusts

    def _study(
        self, conn: Connection, study_uid: str, trusts: frozenset[str] | None
    ) -> dict[str, Any]:
        if not is_valid_uid(study_uid):
            raise InvalidInput("study_uid is not a valid UID")
        facts = store.study_facts(conn, study_uid)
        if facts is None or (trusts is not None and facts["issuer"] not in trusts):
            raise NotFound(f"no study {study_uid} of your trusts' records")  # the same answer
        return facts

    # -- the date ---------------------------------------------------------------------------

    def _person(self, conn: Connection, patient_pk: int) -> _Person:
        """What every study of one person shares: their records at every trust, contacts,
        dates of birth and death, flags and holds on the records (no access check)."""
        component = self._links.components(conn, [patient_pk]).get(patient_pk) or {patient_pk}
        records = store.person_records(conn, component)
        contacts: list[tuple[date, str]] = []
        for r in records:
            who = f"{r['issuer']}/{r['local_id']}"
            for value, what in (
                (r["latest_study_date"], "study"),
                (r["latest_undated_received"], "undated study received"),
                (r["last_visit"], "visit (ADT)"),
            ):
                if (day := _day(value)) is not None:
                    contacts.append((day, f"{what} at {who}"))
        births = [d for r in records if (d := _day(r["birth_date"])) is not None]
        deaths = [d for r in records if (d := _day(r["death_date"])) is not None]
        keys = [(str(r["issuer"]), str(r["local_id"])) for r in records]
        every = keys + store.retired_keys(conn, component)
        holds: list[dict[str, Any]] = []
        numbers = {r["nhs_number"] for r in records if r["nhs_number"]} or {None}
        for (issuer, local_id), nhs in ((k, n) for k in every for n in numbers):
            owner = holds_store.StudyOwner("", issuer, local_id, nhs)  # no study: its own below
            holds += [h for h in holds_store.holds_covering(conn, owner) if h not in holds]
        return _Person(
            keys=keys,
            contacts=contacts,
            birth_date=max(births) if births else None,
            death_date=max(deaths) if deaths else None,
            flags=store.flag_rows(conn, records=every) if every else [],
            holds=holds,
        )

    def _compute(
        self, conn: Connection, facts: Mapping[str, Any], person: _Person | None = None
    ) -> dict[str, Any]:
        """The retention of one study, with every input and rule (no access check, no audit);
        ``person``: what ``_person`` found for its record already (a listing reuses it)."""
        person = person or self._person(conn, int(facts["patient_pk"]))
        study_uid = str(facts["study_uid"])
        acquired = _day(facts["study_date"]) or _day(facts["created_at"])
        assert acquired is not None  # created_at is always set
        contacts = [(acquired, "this study"), *person.contacts]
        last_contact, contact_source = max(contacts, key=lambda c: c[0])
        flags = store.flag_rows(conn, study_uid=study_uid) + person.flags
        pathways = [
            rules.Pathway(
                f["kind"],
                _day(f["since"]),
                f"flag {f['pk']} on "
                + ("this study" if f["study_uid"] else f"record {f['issuer']}/{f['patient_id']}"),
            )
            for f in flags
        ]
        screening = self._derived_screening(facts)
        if screening and not any(p.kind == "screening" for p in pathways):
            pathways.append(rules.Pathway("screening", None, screening))
        inputs = rules.Inputs(
            acquired=acquired,
            last_contact=last_contact,
            birth_date=person.birth_date,
            death_date=person.death_date,
            pathways=tuple(pathways),
        )
        result = rules.retention(inputs, self.policy)
        holds = store.study_holds(conn, study_uid) + person.holds
        return {
            "study_uid": facts["study_uid"],
            "patient": {"issuer": facts["issuer"], "patient_id": facts["local_id"]},
            "retain_until": result.until.isoformat(),
            "rule": result.governing.name,
            "basis": result.governing.basis,
            "rules": [
                {"rule": r.name, "until": r.until.isoformat(), "basis": r.basis}
                for r in result.rules
            ],
            "inputs": {
                "acquired": acquired.isoformat(),
                "last_contact": last_contact.isoformat(),
                "last_contact_source": contact_source,
                "records": person.keys,
                "birth_date": _iso(inputs.birth_date),
                "age_at_last_contact": result.age_at_last_contact,
                "death_date": _iso(inputs.death_date),
                "pathways": [
                    {"kind": p.kind, "since": _iso(p.since), "source": p.source}
                    for p in inputs.pathways
                ],
            },
            "policy": {
                "name": "rcr" if self.policy.rcr else "code",
                "adult_years": self.policy.adult_years,
            },
            "legal_holds": holds,
            "pending_deletion": store.pending_deletion(conn, study_uid),
        }

    @staticmethod
    def _derived_screening(facts: Mapping[str, Any]) -> str:
        modalities = str(facts["modalities"] or "").split("\\")
        if "MG" in modalities:
            return "derived: modality MG (screening rule applied, it only lengthens)"
        if _SCREENING_WORDS.search(str(facts["study_description"] or "")):
            return "derived: study description mentions screening"
        return ""

    def _with_state(self, view: dict[str, Any], today: date) -> dict[str, Any]:
        expired = date.fromisoformat(view["retain_until"]) < today
        view["expired"] = expired
        view["deletable"] = expired and not view["legal_holds"] and not view["pending_deletion"]
        return view

    def explain(self, principal: Principal, study_uid: str) -> dict[str, Any]:
        """A study's retention date, the rule that sets it, every rule and input: why."""
        trusts = self._records_manager(principal, "reading a study's retention")
        with self._index.read() as conn:
            facts = self._study(conn, study_uid, trusts)
            view = self._with_state(self._compute(conn, facts), self.clock())
        self._audit.record(
            principal,
            AuditAction.QUERY,
            patient=PatientRef(str(facts["issuer"]), str(facts["local_id"])),
            study_uid=study_uid,
            detail={"read": "retention", "retain_until": view["retain_until"]},
        )
        return view

    def expired(self, principal: Principal, *, limit: int = 100, after: int = 0) -> dict[str, Any]:
        """Studies of the caller's trusts' records whose retention ran out before today, under
        no legal hold and not proposed already, in index order; ``next_after`` continues."""
        if not 1 <= limit <= 1000:
            raise InvalidInput("limit is 1 to 1000")
        trusts = self._records_manager(principal, "listing expired studies")
        today = self.clock()
        cutoff = rules.add_years(today, -self.policy.adult_years).strftime("%Y%m%d")
        found: list[dict[str, Any]] = []
        cursor, more = after, True
        people: dict[int, _Person] = {}  # a person's studies share the person's inputs
        with self._index.read() as conn:
            while more and len(found) < limit:
                uids = store.expiry_candidates(
                    conn, dated_before=cutoff, trusts=trusts, after_pk=cursor, limit=200
                )
                more = len(uids) == 200
                for uid in uids:
                    facts = store.study_facts(conn, uid)
                    assert facts is not None
                    cursor = int(facts["pk"])
                    pk = int(facts["patient_pk"])
                    if pk not in people:
                        people[pk] = self._person(conn, pk)
                    view = self._with_state(self._compute(conn, facts, people[pk]), today)
                    if view["deletable"]:
                        found.append(view)
                        if len(found) == limit:
                            more = True
                            break
        self._audit.record_each(
            [
                audit_fields(
                    principal,
                    AuditAction.QUERY,
                    patient=PatientRef(view["patient"]["issuer"], view["patient"]["patient_id"]),
                    study_uid=view["study_uid"],
                    detail={"read": "retention-expired", "retain_until": view["retain_until"]},
                )
                for view in found
            ]
        )
        return {
            "as_of": today.isoformat(),
            "studies": found,
            "next_after": cursor if more else None,
        }

    # -- deletion proposals (into R44) ----------------------------------------------------------

    def propose(
        self, principal: Principal, study_uids: Sequence[str], reason: str
    ) -> list[dict[str, Any]]:
        """Keep a retention deletion (113039) of every instance of each study, for a second
        records manager to approve: only studies expired today, under no legal hold, not
        proposed already. All or none: one study that is not is named and nothing is kept."""
        trusts = self._records_manager(principal, "proposing a retention deletion")
        if principal.kind is not PrincipalKind.USER:
            raise AccessDenied("proposing a deletion is for a person with the records_manager role")
        why = checked_text(reason, "reason", 3, 2000)
        if not study_uids or len(study_uids) > 1000 or len(set(study_uids)) != len(study_uids):
            raise InvalidInput("name 1 to 1000 different study UIDs")
        today = self.clock()

        def op(conn: Connection) -> list[dict[str, Any]]:
            out = []
            for uid in study_uids:
                facts = self._study(conn, uid, trusts)
                view = self._with_state(self._compute(conn, facts), today)
                if not view["deletable"]:
                    raise RetentionConflict(f"study {uid} cannot be proposed: {_why_not(view)}")
                refs = store.current_refs(conn, uid)
                owner = holds_store.StudyOwner(
                    uid, str(facts["issuer"]), str(facts["local_id"]), facts["nhs_number"]
                )
                pk = holds_store.add_deletion(
                    conn,
                    note_uid=generate_uid(),
                    code=RETENTION_EXPIRED,
                    owner=owner,
                    requested_by=principal.describe(),
                    requester_user=principal.name,
                    refs=refs,
                )
                AuditTrail.append_in(
                    conn,
                    audit_fields(
                        principal,
                        AuditAction.DELETE,
                        patient=PatientRef(owner.issuer, owner.local_id),
                        study_uid=uid,
                        detail={
                            "iocm": RETENTION_EXPIRED,
                            "reason": why,
                            "retain_until": view["retain_until"],
                            "rule": view["rule"],
                            "listed": len(refs),
                            "rejected": {},
                            "pending_approval": pk,
                        },
                    ),
                )
                rows = holds_store.deletion_rows(conn, status=None, trusts=None, pk=pk)
                out.append(deletion_view(rows[0]))
            return out

        return self._index.write(op)

    # -- pathway flags ----------------------------------------------------------------------

    def set_flag(
        self,
        principal: Principal,
        *,
        kind: str,
        target: Mapping[str, Any],
        note: str,
        since: object = None,
    ) -> dict[str, Any]:
        """Flag a study, or a patient record (then every study of that person), as on a
        pathway with a longer retention period (``since``: the date it counts from)."""
        trusts = self._records_manager(principal, "setting a retention pathway flag")
        if kind not in rules.PATHWAYS:
            raise InvalidInput(f"kind is one of {', '.join(rules.PATHWAYS)}")
        text = checked_text(note, "note", 3, 2000)
        start = _since(since, self.clock())
        checked = _flag_target(target)

        def op(conn: Connection) -> dict[str, Any]:
            if checked.get("study_uid"):
                facts = self._study(conn, str(checked["study_uid"]), trusts)
                patient = PatientRef(str(facts["issuer"]), str(facts["local_id"]))
            else:
                patient = PatientRef(str(checked["issuer"]), str(checked["patient_id"]))
                known = store.person_key_exists(conn, patient.issuer, patient.local_id)
                if not known or (trusts is not None and patient.issuer not in trusts):
                    who = f"{patient.issuer}/{patient.local_id}"
                    raise NotFound(f"no patient record {who} of your trusts")
            pk = store.add_flag(
                conn, checked, kind, start, text, principal.describe(), principal.trust
            )
            AuditTrail.append_in(
                conn,
                audit_fields(
                    principal,
                    AuditAction.PATIENT_RECORD,
                    patient=patient,
                    study_uid=checked.get("study_uid"),
                    detail={"retention_flag": pk, "set": kind, "since": start, "note": text},
                ),
            )
            return _flag_view(store.flag_rows(conn, active_only=False, pk=pk)[0])

        return self._index.write(op)

    def flags(self, principal: Principal, *, active_only: bool = True) -> list[dict[str, Any]]:
        """Pathway flags on the caller's trusts' records and studies, oldest first."""
        trusts = self._records_manager(principal, "listing retention pathway flags")
        with self._index.read() as conn:
            rows = store.flag_rows(conn, active_only=active_only, trusts=trusts)
        self._audit.record(
            principal,
            AuditAction.QUERY,
            detail={"read": "retention-flags", "active_only": active_only, "count": len(rows)},
        )
        return [_flag_view(r) for r in rows]

    def remove_flag(self, principal: Principal, flag_id: int, reason: str) -> dict[str, Any]:
        trusts = self._records_manager(principal, "removing a retention pathway flag")
        why = checked_text(reason, "reason", 3, 2000)

        def op(conn: Connection) -> dict[str, Any]:
            rows = store.flag_rows(conn, active_only=False, pk=flag_id, trusts=trusts)
            if not rows:
                raise NotFound(f"no retention flag {flag_id} of your trusts' records")
            row = rows[0]
            if not store.remove_flag(conn, flag_id, principal.describe(), why):
                raise RetentionConflict(f"retention flag {flag_id} is removed already")
            patient = (
                PatientRef(str(row["issuer"]), str(row["patient_id"])) if row["issuer"] else None
            )
            AuditTrail.append_in(
                conn,
                audit_fields(
                    principal,
                    AuditAction.PATIENT_RECORD,
                    patient=patient,
                    study_uid=row["study_uid"],
                    detail={"retention_flag": flag_id, "removed": row["kind"], "reason": why},
                ),
            )
            return _flag_view(store.flag_rows(conn, active_only=False, pk=flag_id)[0])

        return self._index.write(op)


def _flag_target(raw: Mapping[str, Any]) -> dict[str, str | None]:
    """A study, or a patient record (issuer with patient_id): exactly one."""
    study, issuer, local_id = raw.get("study_uid"), raw.get("issuer"), raw.get("patient_id")
    if bool(study) == bool(issuer or local_id) or (not study and not (issuer and local_id)):
        raise InvalidInput("a flag names one thing: study_uid, or issuer with patient_id")
    if study:
        if not is_valid_uid(str(study)):
            raise InvalidInput("study_uid is not a valid UID")
        return {"study_uid": str(study)}
    return {
        "issuer": checked_text(issuer, "issuer", 1, 16),
        "patient_id": checked_text(local_id, "patient_id", 1, 64),
    }


def _why_not(view: Mapping[str, Any]) -> str:
    if not view["expired"]:
        return f"its retention runs until {view['retain_until']} ({view['rule']})"
    if view["legal_holds"]:
        holds = ", ".join(str(h["id"]) for h in view["legal_holds"])
        return f"it is under legal hold ({holds})"
    return f"retention deletion {view['pending_deletion']} is pending already"
