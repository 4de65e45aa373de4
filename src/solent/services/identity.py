"""Cross-trust patient index: one person's records at several trusts, linked and never merged.

A record is (issuing trust, local ID). Two records are linked when an explicit decision says so
(HL7 A24 or an administrator) or when both carry the same valid NHS number traced on PDS
(NSTS01) with agreeing date of birth and sex, unless an unlink (A37 or an administrator) blocks
that pair. Conflicts never link: they go to the data-quality queue for a person to resolve.
Every change is written with who, which message, when, and the state before and after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection

from solent.domain import nhs_number as nhs
from solent.domain.principal import Principal
from solent.errors import InvalidInput, NotFound, SolentError
from solent.index import identity as store
from solent.index.sql import Index
from solent.services import trust_view
from solent.services.audit import AuditAction, AuditTrail, PatientRef, audit_fields

T = TypeVar("T")

VERIFIED = "NSTS01"
NHS_OID = "2.16.840.1.113883.2.1.4.1"
DEMOGRAPHIC_FIELDS = ("name", "birth_date", "sex")
LINK_FIELDS = {"birth_date", "sex", "nhs_number", "nhs_number_valid", "nhs_number_verified"}


class IdentityRejected(SolentError):
    """A change that must be refused (HL7 AE) and, when ``work_item`` is set, queued for people."""

    def __init__(self, message: str, *, work_item: str | None = None, held: bool = False) -> None:
        super().__init__(message)
        self.work_item = work_item
        self.held = held


@dataclass(frozen=True, slots=True)
class PatientKey:
    """A local identifier with the trust that issued it (CX.1 + CX.4)."""

    issuer: str
    local_id: str

    def __str__(self) -> str:
        return f"{self.local_id}/{self.issuer}"


@dataclass(frozen=True, slots=True)
class Demographics:
    """What a trust's PAS says about its own record; None means "not sent", not "erase"."""

    name: str | None = None
    birth_date: str | None = None
    sex: str | None = None
    nhs_number: str | None = None  # as received; normalised and checked here
    nhs_status: str | None = None  # PID-32, NSTS01..NSTS08
    address: str | None = None
    phone: str | None = None
    gp_practice: str | None = None
    gp: str | None = None


@dataclass(frozen=True, slots=True)
class Resolved:
    patient_pk: int
    issuer: str
    local_id: str
    retired: bool  # the identifier asked for is retired; this is the record that replaced it


@dataclass(frozen=True, slots=True)
class Change:
    """Context of one change: who made it and which journalled message carried it."""

    principal: Principal
    message_pk: int | None = None

    @property
    def actor(self) -> str:
        return self.principal.describe()


def is_placeholder(number: str) -> bool:
    """Legacy placeholders such as 0000000000 pass the checksum but name nobody (R2)."""
    return len(set(number)) == 1


def _conflict(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    if a["birth_date"] and b["birth_date"] and a["birth_date"] != b["birth_date"]:
        return f"date of birth {a['birth_date']} vs {b['birth_date']}"
    sexes = ("M", "F")
    if a["sex"] in sexes and b["sex"] in sexes and a["sex"] != b["sex"]:
        return f"sex {a['sex']} vs {b['sex']}"
    return None


def _key(row: dict[str, Any]) -> str:
    return f"{row['local_id']}/{row['issuer']}"


def _snapshot(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: row[k]
        for k in (
            "issuer",
            "local_id",
            "name",
            "birth_date",
            "sex",
            "nhs_number",
            "nhs_number_valid",
            "nhs_number_verified",
        )
    }


class IdentityService:
    def __init__(self, index: Index) -> None:
        self.index = index

    def _write(self, conn: Connection | None, fn: Callable[[Connection], T]) -> T:
        return fn(conn) if conn is not None else self.index.write(fn)

    # -- lookups other services use ---------------------------------------------------------

    def resolve(
        self, issuer: str, local_id: str, *, conn: Connection | None = None
    ) -> Resolved | None:
        """The record (issuer, local_id) names, following retired identifiers to their record."""

        def op(c: Connection) -> Resolved | None:
            row = store.find_patient(c, issuer, local_id)
            if row:
                return Resolved(int(row["pk"]), row["issuer"], row["local_id"], False)
            retired = store.find_retired(c, issuer, local_id)
            if retired is None:
                return None
            now_row = store.get_patient(c, int(retired["patient_pk"]))
            if now_row is None:
                return None
            return Resolved(int(now_row["pk"]), now_row["issuer"], now_row["local_id"], True)

        if conn is not None:
            return op(conn)
        with self.index.read() as c:
            return op(c)

    def by_nhs_number(self, number: str, *, conn: Connection | None = None) -> set[int]:
        """Records of the person with this NHS number: those carrying it valid and traced, and
        every record linked to them. Untraced records are not included, nor records whose
        date of birth or sex conflicts with the others (they wait in the work queue)."""

        def op(c: Connection) -> set[int]:
            n = nhs.normalise(number)
            if not nhs.is_valid(n):
                return set()
            seeds = [
                int(r["pk"])
                for r in store.patients_by_nhs(c, n)
                if r["nhs_number_valid"] and r["nhs_number_verified"]
            ]
            groups: list[set[int]] = []
            for pk in seeds:
                if not any(pk in g for g in groups):
                    groups.append(self._component(c, pk))
            if not groups:
                return set()
            # Records carrying the number but disagreeing on DOB/sex form separate groups and
            # sit in the work queue; the number names the largest agreeing group (ties: the
            # group with the oldest record) until a person resolves the conflict.
            return max(groups, key=lambda g: (len(g), -min(g)))

        if conn is not None:
            return op(conn)
        with self.index.read() as c:
            return op(c)

    def linked_patient_pks(self, patient_pk: int, *, conn: Connection | None = None) -> set[int]:
        """This record and every record linked to it (transitively); empty if it is unknown."""
        if conn is not None:
            return self._component(conn, patient_pk)
        with self.index.read() as c:
            return self._component(c, patient_pk)

    def _neighbours(self, conn: Connection, row: dict[str, Any]) -> set[int]:
        pk = int(row["pk"])
        explicit = store.link_rows(conn, [pk])
        blocked = set()
        out = set()
        for link in explicit:
            other = int(link["patient_b"] if link["patient_a"] == pk else link["patient_a"])
            if link["status"] == "linked":
                out.add(other)
            else:
                blocked.add(other)
        if row["nhs_number"] and row["nhs_number_valid"] and row["nhs_number_verified"]:
            for cand in store.patients_by_nhs(conn, row["nhs_number"]):
                opk = int(cand["pk"])
                if (
                    opk != pk
                    and opk not in blocked
                    and cand["issuer"] != row["issuer"]
                    and cand["nhs_number_valid"]
                    and cand["nhs_number_verified"]
                    and _conflict(row, cand) is None
                ):
                    out.add(opk)
        return out - blocked

    def _component(self, conn: Connection, patient_pk: int) -> set[int]:
        start = store.get_patient(conn, patient_pk)
        if start is None:
            return set()
        seen = {patient_pk}
        todo = [start]
        while todo:
            row = todo.pop()
            for other in self._neighbours(conn, row) - seen:
                seen.add(other)
                nxt = store.get_patient(conn, other)
                if nxt is not None:
                    todo.append(nxt)
        return seen

    def links_of(self, patient_pk: int) -> list[dict[str, Any]]:
        """The records linked to this one, each with why (nhs-number, hl7:A24, admin)."""
        with self.index.read() as conn:
            me = store.get_patient(conn, patient_pk)
            if me is None:
                raise NotFound("no such patient record")
            component = self._component(conn, patient_pk)
            explicit = {
                int(r["patient_b"] if r["patient_a"] == patient_pk else r["patient_a"]): r
                for r in store.link_rows(conn, [patient_pk])
            }
            out = []
            for row in store.get_patients(conn, component - {patient_pk}):
                link = explicit.get(int(row["pk"]))
                if link is not None and link["status"] == "linked":
                    why = link["source"]
                elif row["nhs_number"] == me["nhs_number"]:
                    why = "nhs-number"
                else:
                    why = "indirect"
                out.append({**_snapshot(row), "patient_pk": int(row["pk"]), "linked_by": why})
            return out

    # -- what DICOM says after a change -----------------------------------------------------

    def current_patient_attributes(
        self,
        study_uid: str | None = None,
        *,
        patient_pk: int | None = None,
        viewing_trust: str | None = None,
    ) -> dict[str, Any]:
        """Patient attributes as the record says now, by DICOM keyword, for outgoing DICOM.

        ``OtherPatientIDsSequence`` is a list of item dicts (the NHS number, issuer NHS, with
        its ISO OID). A value of None means "remove this attribute" (contact details of a
        sensitive patient). Raises NotFound when the study or record is unknown.
        ``viewing_trust``: the person as that trust's linked record shows them (trust_view).
        """
        with self.index.read() as conn:
            pk = patient_pk
            if study_uid is not None:
                study = store.study_by_uid(conn, study_uid)
                if study is None:
                    raise NotFound(f"no study {study_uid}")
                pk = int(study["patient_pk"])
            if pk is None:
                raise InvalidInput("give a study UID or a patient record")
            row = store.get_patient(conn, pk)
            if row is None:
                raise NotFound("no such patient record")
            contact = store.get_contact(conn, pk)
            seen = self.record_seen_from(pk, viewing_trust, conn=conn)
            if seen is not None and not (contact and contact["sensitive"]):
                contact = store.get_contact(conn, int(seen["pk"]))
        attrs: dict[str, Any] = {
            "PatientID": row["local_id"],
            "IssuerOfPatientID": row["issuer"],
            "PatientName": row["name"] or "",
            "PatientBirthDate": row["birth_date"] or "",
            "PatientSex": row["sex"] or "",
            "OtherPatientIDsSequence": [],
        }
        if row["nhs_number"] and row["nhs_number_valid"]:
            attrs["OtherPatientIDsSequence"] = [
                {
                    "PatientID": row["nhs_number"],
                    "IssuerOfPatientID": nhs.NHS_ISSUER,
                    "TypeOfPatientID": "TEXT",
                    "IssuerOfPatientIDQualifiersSequence": [
                        {
                            "UniversalEntityID": NHS_OID,
                            "UniversalEntityIDType": "ISO",
                            "IdentifierTypeCode": "NH",
                        }
                    ],
                }
            ]
        if contact and contact["sensitive"]:
            attrs["PatientAddress"] = None
            attrs["PatientTelephoneNumbers"] = None
        if seen is not None:
            return trust_view.seen_attributes(attrs, row, seen)
        return attrs

    def subject_seen_by(self, principal: Principal, study: Mapping[str, Any]) -> dict[str, Any]:
        """The record a study (a ``studies`` row) is shown under to ``principal``: its trust's
        linked record where it holds one (trust_view), else the study's own.
        Keys: patient_pk, issuer, local_id."""
        own = {
            "patient_pk": int(study["patient_pk"]),
            "issuer": study["issuer"],
            "local_id": study["local_id"],
        }
        seen = self.record_seen_from(own["patient_pk"], principal.trust)
        if seen is None:
            return own
        return {
            "patient_pk": int(seen["pk"]),
            "issuer": seen["issuer"],
            "local_id": seen["local_id"],
        }

    def record_seen_from(
        self, patient_pk: int, trust: str | None, *, conn: Connection | None = None
    ) -> dict[str, Any] | None:
        """``trust``'s record linked to this one, shown instead of it to that trust's
        callers (services/trust_view.py); None when there is none or it is ``trust``'s own."""

        def op(c: Connection) -> dict[str, Any] | None:
            row = store.get_patient(c, patient_pk)
            if not trust or row is None or row["issuer"] == trust:
                return None  # the caller's own record (the common case): no link walk
            return trust_view.record_seen_from(c, patient_pk, trust, self._component(c, patient_pk))

        if conn is not None:
            return op(conn)
        with self.index.read() as c:
            return op(c)

    # -- changes from the trusts' feeds ----------------------------------------------------------

    def update_record(
        self,
        key: PatientKey,
        demo: Demographics,
        change: Change,
        *,
        conn: Connection | None = None,
        create: bool = True,
    ) -> int:
        """A01/A04/A08/A28/A31: the sending trust updates its own record (created if new)."""

        def op(c: Connection) -> int:
            self._require_trust(c, key.issuer)
            row = store.find_patient(c, key.issuer, key.local_id)
            if row is None:
                if not create:
                    raise IdentityRejected(f"unknown patient {key}")
                pk = store.insert_patient(c, key.issuer, key.local_id, {})
                row = store.get_patient(c, pk)
                assert row is not None
                store.add_event(
                    c,
                    kind="create",
                    actor=change.actor,
                    patient_pk=pk,
                    issuer=key.issuer,
                    local_id=key.local_id,
                    message_pk=change.message_pk,
                    after={"issuer": key.issuer, "local_id": key.local_id},
                )
            self._apply_demographics(c, row, demo, change)
            return int(row["pk"])

        return self._write(conn, op)

    def _require_trust(self, conn: Connection, issuer: str) -> None:
        if not store.trust_exists(conn, issuer):
            raise IdentityRejected(
                f"assigning authority {issuer} is not a registered trust "
                "(add it with `solent trust add`)"
            )

    def _apply_demographics(
        self,
        conn: Connection,
        row: dict[str, Any],
        demo: Demographics,
        change: Change,
        linked_before: set[int] | None = None,
    ) -> None:
        pk = int(row["pk"])
        store.lock_patient(conn, pk)
        values: dict[str, Any] = {}
        for name in DEMOGRAPHIC_FIELDS:
            new = getattr(demo, name)
            if new is not None and new != row[name]:
                values[name] = new
        values.update(self._nhs_values(conn, row, demo, change))
        # Links depend only on the NHS number, its status, date of birth and sex: when none
        # of those changed, neither did the links (the common A08), so skip the graph walk.
        if linked_before is None and LINK_FIELDS & values.keys():
            linked_before = self._component(conn, pk)
        if values:
            before = {k: row[k] for k in values}
            store.update_patient(conn, pk, values)
            store.add_event(
                conn,
                kind="update",
                actor=change.actor,
                patient_pk=pk,
                issuer=row["issuer"],
                local_id=row["local_id"],
                message_pk=change.message_pk,
                before=before,
                after=values,
            )
            self._audit(conn, change, row, {"change": "update", "fields": sorted(values)})
        contact = {
            k: v
            for k, v in (
                ("address", demo.address),
                ("phone", demo.phone),
                ("gp_practice", demo.gp_practice),
                ("gp", demo.gp),
                ("nhs_number_status", demo.nhs_status),
            )
            if v is not None
        }
        if contact:
            store.upsert_contact(conn, pk, contact)
        if linked_before is not None:
            self._review(conn, pk, change, linked_before)

    def _nhs_values(
        self, conn: Connection, row: dict[str, Any], demo: Demographics, change: Change
    ) -> dict[str, Any]:
        if demo.nhs_number is None:
            return {}
        number = nhs.normalise(demo.nhs_number)
        item = {
            "issuer": row["issuer"],
            "local_id": row["local_id"],
            "patient_pk": int(row["pk"]),
            "message_pk": change.message_pk,
        }
        if len(number) != 10 or not number.isdigit():
            store.add_work_item(
                conn,
                kind="invalid-nhs-number",
                detail=f"NHS number {demo.nhs_number!r} is not ten digits; not stored",
                **item,
            )
            return {}
        valid = nhs.is_valid(number)
        if not valid:
            store.add_work_item(
                conn,
                kind="invalid-nhs-number",
                nhs_number=number,
                detail=f"NHS number {number} fails the modulus 11 check; records not linked",
                **item,
            )
        elif is_placeholder(number):
            valid = False
            store.add_work_item(
                conn,
                kind="invalid-nhs-number",
                nhs_number=number,
                detail=f"NHS number {number} is a placeholder, not an issued number",
                **item,
            )
        if demo.nhs_status is None:
            verified = bool(row["nhs_number_verified"]) and number == row["nhs_number"]
        else:
            verified = demo.nhs_status == VERIFIED
        verified = verified and valid
        if valid and not verified:
            store.add_work_item(
                conn,
                kind="nhs-number-not-verified",
                nhs_number=number,
                detail=(
                    f"NHS number {number} has status {demo.nhs_status or 'unknown'} "
                    "(not traced on PDS); not linked across trusts"
                ),
                **item,
            )
        if row["nhs_number"] and row["nhs_number_valid"] and row["nhs_number"] != number:
            store.add_work_item(
                conn,
                kind="nhs-number-changed",
                nhs_number=number,
                detail=(
                    f"record {_key(row)} carried NHS number {row['nhs_number']}, "
                    f"now {number}; held as unverified until reviewed"
                ),
                **item,
            )
            verified = False
        out = {"nhs_number": number, "nhs_number_valid": valid, "nhs_number_verified": verified}
        return {k: v for k, v in out.items() if row[k] != v}

    def _review(self, conn: Connection, pk: int, change: Change, linked_before: set[int]) -> None:
        """Queue conflicts with the same NHS number, and record links that came or went."""
        row = store.get_patient(conn, pk)
        assert row is not None
        if row["nhs_number"] and row["nhs_number_valid"]:
            for other in store.patients_by_nhs(conn, row["nhs_number"]):
                if int(other["pk"]) == pk or not other["nhs_number_valid"]:
                    continue
                item = {
                    "issuer": row["issuer"],
                    "local_id": row["local_id"],
                    "patient_pk": pk,
                    "nhs_number": row["nhs_number"],
                    "message_pk": change.message_pk,
                }
                if other["issuer"] == row["issuer"]:
                    store.add_work_item(
                        conn,
                        kind="duplicate-record",
                        detail=(
                            f"{_key(row)} and {_key(other)} at the same trust carry NHS number "
                            f"{row['nhs_number']}; merge them with A40 if they are one person"
                        ),
                        **item,
                    )
                    continue
                why = _conflict(row, other)
                if why:
                    store.add_work_item(
                        conn,
                        kind="demographic-conflict",
                        detail=(
                            f"NHS number {row['nhs_number']}: {_key(row)} and {_key(other)} "
                            f"disagree on {why}; not linked"
                        ),
                        **item,
                    )
        self._record_link_change(conn, pk, linked_before, change, "nhs-number")

    def _record_link_change(
        self, conn: Connection, pk: int, before: set[int], change: Change, why: str
    ) -> None:
        after = self._component(conn, pk)
        if after == before:
            return
        rows = {int(r["pk"]): _key(r) for r in store.get_patients(conn, before | after)}
        row = store.get_patient(conn, pk)
        store.add_event(
            conn,
            kind="links-changed",
            actor=change.actor,
            patient_pk=pk,
            issuer=row["issuer"] if row else None,
            local_id=row["local_id"] if row else None,
            message_pk=change.message_pk,
            before={"linked": sorted(rows[p] for p in before - {pk} if p in rows), "why": why},
            after={"linked": sorted(rows[p] for p in after - {pk} if p in rows), "why": why},
        )
        for other in (after ^ before) - {pk}:
            o = store.get_patient(conn, other)
            if o is not None:
                store.add_event(
                    conn,
                    kind="links-changed",
                    actor=change.actor,
                    patient_pk=other,
                    other_patient_pk=pk,
                    issuer=o["issuer"],
                    local_id=o["local_id"],
                    message_pk=change.message_pk,
                    before={"linked": other in before, "with": rows.get(pk), "why": why},
                    after={"linked": other in after, "with": rows.get(pk), "why": why},
                )

    def _audit(
        self, conn: Connection, change: Change, row: dict[str, Any], detail: dict[str, Any]
    ) -> None:
        AuditTrail.append_in(
            conn,
            audit_fields(
                change.principal,
                AuditAction.PATIENT_RECORD,
                patient=PatientRef(row["issuer"], row["local_id"], row["nhs_number"]),
                detail={**detail, "message_pk": change.message_pk},
            ),
        )

    # -- A40 merge -------------------------------------------------------------------------

    def merge(
        self,
        target: PatientKey,
        source: PatientKey,
        demo: Demographics,
        change: Change,
        *,
        prior_name: str | None = None,
        conn: Connection | None = None,
    ) -> int:
        """Merge ``source`` (MRG-1) into ``target`` (PID-3) within one trust; idempotent."""

        def op(c: Connection) -> int:
            if source.issuer != target.issuer:
                raise IdentityRejected(
                    f"merge across assigning authorities refused: MRG-1 {source} and "
                    f"PID-3 {target} are issued by different trusts",
                    work_item="merge-issuer-mismatch",
                )
            if source.local_id == target.local_id:
                raise IdentityRejected(f"MRG-1 and PID-3 name the same identifier {target}")
            self._require_trust(c, target.issuer)
            src = store.find_patient(c, source.issuer, source.local_id)
            tgt = store.find_patient(c, target.issuer, target.local_id)
            if src is None:
                retired = store.find_retired(c, source.issuer, source.local_id)
                if retired is not None and tgt is not None and retired["patient_pk"] == tgt["pk"]:
                    return int(tgt["pk"])  # already merged: a replay changes nothing
            self._check_direction(demo, prior_name, src, tgt, source, target)
            if tgt is None:
                pk = self.update_record(target, Demographics(), change, conn=c)
                tgt = store.get_patient(c, pk)
                assert tgt is not None
            tpk = int(tgt["pk"])
            store.lock_patient(c, tpk)
            linked_before = self._component(c, tpk)
            moved: list[str] = []
            before: dict[str, Any] = {"target": _snapshot(tgt)}
            if src is not None:
                spk = int(src["pk"])
                store.lock_patient(c, spk)
                linked_before |= self._component(c, spk)
                moved = store.study_uids_of(c, spk)
                before["source"] = _snapshot(src)
                before["source_pk"] = spk
                store.move_record(c, spk, tpk)
            store.rename_order_patient(c, source.issuer, source.local_id, target.local_id)
            store.add_retired(c, source.issuer, source.local_id, tpk, "merge")
            store.add_event(
                c,
                kind="merge",
                actor=change.actor,
                patient_pk=tpk,
                issuer=source.issuer,
                local_id=source.local_id,
                message_pk=change.message_pk,
                before={**before, "studies": moved},
                after={"target": _snapshot(tgt), "retired": str(source), "studies": moved},
            )
            self._audit(c, change, tgt, {"change": "merge", "retired": str(source)})
            self.index.append_event(
                c,
                "patient.merged",
                change.principal,
                trust_code=target.issuer,
                patient_pk=tpk,
                detail={"retired": source.local_id, "surviving": target.local_id, "studies": moved},
            )
            refreshed = store.get_patient(c, tpk)
            assert refreshed is not None
            self._apply_demographics(c, refreshed, demo, change, linked_before)
            return tpk

        return self._write(conn, op)

    @staticmethod
    def _check_direction(
        demo: Demographics,
        prior_name: str | None,
        src: dict[str, Any] | None,
        tgt: dict[str, Any] | None,
        source: PatientKey,
        target: PatientKey,
    ) -> None:
        """Hold a merge that looks reversed: the surviving identity is the unidentified one."""

        def unknown(name: str | None) -> bool:
            return bool(name) and str(name).upper().startswith(("UNKNOWN", "UNIDENTIFIED"))

        surviving_unknown = unknown(demo.name) or (tgt is not None and unknown(tgt["name"]))
        retiring_known = (src is not None and src["name"] and not unknown(src["name"])) or (
            prior_name is not None and not unknown(prior_name)
        )
        if surviving_unknown and retiring_known:
            raise IdentityRejected(
                f"merge held for review: it would retire identified record {source} into "
                f"unidentified record {target} (PID and MRG swapped?)",
                work_item="merge-held-reversed",
                held=True,
            )

    # -- A47 identifier change ---------------------------------------------------------------

    def change_identifier(
        self,
        new: PatientKey,
        old: PatientKey,
        change: Change,
        *,
        conn: Connection | None = None,
    ) -> int:
        """Re-key record ``old`` as ``new`` (same trust); never merges two records."""

        def op(c: Connection) -> int:
            if new.issuer != old.issuer:
                raise IdentityRejected(
                    f"identifier change across assigning authorities refused: {old} -> {new}",
                    work_item="renumber-issuer-mismatch",
                )
            self._require_trust(c, new.issuer)
            row = store.find_patient(c, old.issuer, old.local_id)
            if row is None:
                retired = store.find_retired(c, old.issuer, old.local_id)
                now_row = store.get_patient(c, int(retired["patient_pk"])) if retired else None
                if now_row is not None and now_row["local_id"] == new.local_id:
                    return int(now_row["pk"])  # already done
                raise IdentityRejected(f"unknown patient {old}: nothing to renumber")
            if old.local_id == new.local_id:
                return int(row["pk"])
            if store.find_patient(c, new.issuer, new.local_id) is not None:
                raise IdentityRejected(
                    f"identifier change refused: {new} already names another record "
                    "(that would merge two people; use A40 if they are one)",
                    work_item="renumber-collision",
                )
            return self._rename(c, row, new.local_id, change)

        return self._write(conn, op)

    def _rename(
        self,
        conn: Connection,
        row: dict[str, Any],
        new_id: str,
        change: Change,
        reverses: int | None = None,
    ) -> int:
        pk, issuer, old_id = int(row["pk"]), row["issuer"], row["local_id"]
        store.lock_patient(conn, pk)
        store.rename_patient(conn, pk, new_id)
        store.rename_order_patient(conn, issuer, old_id, new_id)
        store.remove_retired(conn, issuer, new_id)
        store.add_retired(conn, issuer, old_id, pk, "renumber")
        store.add_event(
            conn,
            kind="renumber",
            actor=change.actor,
            patient_pk=pk,
            issuer=issuer,
            local_id=old_id,
            message_pk=change.message_pk,
            before={"local_id": old_id},
            after={"local_id": new_id},
            reverses=reverses,
        )
        self._audit(conn, change, row, {"change": "renumber", "new_local_id": new_id})
        self.index.append_event(
            conn,
            "patient.renumbered",
            change.principal,
            trust_code=issuer,
            patient_pk=pk,
            detail={"old": old_id, "new": new_id},
        )
        return pk

    # -- A24 / A37 link and unlink -----------------------------------------------------------

    def link(
        self,
        a: PatientKey,
        b: PatientKey,
        change: Change,
        *,
        source: str = "admin",
        conn: Connection | None = None,
    ) -> None:
        self._set_link(a, b, "linked", change, source, conn)

    def unlink(
        self,
        a: PatientKey,
        b: PatientKey,
        change: Change,
        *,
        source: str = "admin",
        conn: Connection | None = None,
    ) -> None:
        self._set_link(a, b, "unlinked", change, source, conn)

    def _set_link(
        self,
        a: PatientKey,
        b: PatientKey,
        status: str,
        change: Change,
        source: str,
        conn: Connection | None,
    ) -> None:
        def op(c: Connection) -> None:
            ra, rb = (
                self.resolve(a.issuer, a.local_id, conn=c),
                self.resolve(b.issuer, b.local_id, conn=c),
            )
            for key, r in ((a, ra), (b, rb)):
                if r is None:
                    raise IdentityRejected(f"unknown patient {key}")
            assert ra is not None and rb is not None
            if ra.patient_pk == rb.patient_pk:
                raise IdentityRejected(f"{a} and {b} are the same record")
            self._set_link_pks(c, ra.patient_pk, rb.patient_pk, status, change, source)

        self._write(conn, op)

    def _set_link_pks(
        self,
        conn: Connection,
        apk: int,
        bpk: int,
        status: str | None,
        change: Change,
        source: str,
        reverses: int | None = None,
    ) -> None:
        old = store.get_link(conn, apk, bpk)
        old_status = old["status"] if old else None
        if old_status == status:
            return
        linked_before = self._component(conn, apk) | self._component(conn, bpk)
        if status is None:
            store.delete_link(conn, apk, bpk)
        else:
            store.set_link(conn, apk, bpk, status, source, change.actor)
        rows = {int(r["pk"]): r for r in store.get_patients(conn, [apk, bpk])}
        store.add_event(
            conn,
            kind="link" if status == "linked" else "unlink",
            actor=change.actor,
            patient_pk=apk,
            other_patient_pk=bpk,
            issuer=rows[apk]["issuer"],
            local_id=rows[apk]["local_id"],
            message_pk=change.message_pk,
            before={"status": old_status, "pair": [_key(rows[apk]), _key(rows[bpk])]},
            after={"status": status, "source": source},
            reverses=reverses,
        )
        self._audit(
            conn, change, rows[apk], {"change": status or "link-cleared", "with": _key(rows[bpk])}
        )
        self.index.append_event(
            conn,
            "patient.linked" if status == "linked" else "patient.unlinked",
            change.principal,
            trust_code=rows[apk]["issuer"],
            patient_pk=apk,
            detail={"with_patient_pk": bpk, "source": source},
        )
        self._record_link_change(conn, apk, linked_before, change, source)

    # -- S-flag ----------------------------------------------------------------------------

    def set_sensitive(self, key: PatientKey, sensitive: bool, change: Change) -> None:
        """Mark a record restricted on PDS (S-flag): address and telephone are then left out
        of every API view, FHIR Patient and outgoing DICOM header (R13)."""

        def op(c: Connection) -> None:
            found = self.resolve(key.issuer, key.local_id, conn=c)
            if found is None:
                raise NotFound(f"no patient {key}")
            contact = store.get_contact(c, found.patient_pk)
            before = bool(contact and contact["sensitive"])
            if before == sensitive:
                return
            store.upsert_contact(c, found.patient_pk, {"sensitive": sensitive})
            row = store.get_patient(c, found.patient_pk)
            assert row is not None
            store.add_event(
                c,
                kind="sensitive",
                actor=change.actor,
                patient_pk=found.patient_pk,
                issuer=row["issuer"],
                local_id=row["local_id"],
                message_pk=change.message_pk,
                before={"sensitive": before},
                after={"sensitive": sensitive},
            )
            self._audit(c, change, row, {"change": "sensitive", "sensitive": sensitive})

        self.index.write(op)

    # -- reversal --------------------------------------------------------------------------

    def reverse(self, event_pk: int, principal: Principal) -> int:
        """Undo a link, unlink, identifier change or demographic update; merges are final
        (HL7 v2 has no un-merge: re-register and re-file instead)."""
        change = Change(principal)

        def op(c: Connection) -> int:
            ev = store.get_event(c, event_pk)
            if ev is None:
                raise NotFound(f"no identity event {event_pk}")
            if ev["reversed_by"] is not None:
                raise InvalidInput(f"event {event_pk} was already reversed by {ev['reversed_by']}")
            kind = ev["kind"]
            if kind in ("link", "unlink"):
                before = ev["before"]["status"]
                self._set_link_pks(
                    c,
                    int(ev["patient_pk"]),
                    int(ev["other_patient_pk"]),
                    before,
                    change,
                    "admin",
                    reverses=event_pk,
                )
            elif kind == "renumber":
                row = store.get_patient(c, int(ev["patient_pk"]))
                if row is None or row["local_id"] != ev["after"]["local_id"]:
                    raise InvalidInput("the record changed since; reverse the later events first")
                old_id = ev["before"]["local_id"]
                if store.find_patient(c, row["issuer"], old_id) is not None:
                    raise InvalidInput(f"{old_id}/{row['issuer']} names another record now")
                self._rename(c, row, old_id, change, reverses=event_pk)
            elif kind == "update":
                row = store.get_patient(c, int(ev["patient_pk"]))
                if row is None:
                    raise NotFound("the record no longer exists")
                linked_before = self._component(c, int(row["pk"]))
                store.update_patient(c, int(row["pk"]), ev["before"])
                store.add_event(
                    c,
                    kind="update",
                    actor=change.actor,
                    patient_pk=int(row["pk"]),
                    issuer=row["issuer"],
                    local_id=row["local_id"],
                    before=ev["after"],
                    after=ev["before"],
                    reverses=event_pk,
                )
                self._record_link_change(c, int(row["pk"]), linked_before, change, "reversal")
            else:
                raise InvalidInput(f"a {kind} event cannot be reversed")
            return event_pk

        return self.index.write(op)

    # -- reading the trail and the queue -------------------------------------------------------

    def history(self, patient_pk: int) -> list[dict[str, Any]]:
        """Identity events of this record and of identifiers it absorbed, oldest first."""
        with self.index.read() as conn:
            row = store.get_patient(conn, patient_pk)
            if row is None:
                raise NotFound("no such patient record")
            idents = [(row["issuer"], row["local_id"])] + [
                (r["issuer"], r["local_id"]) for r in store.retired_of(conn, [patient_pk])
            ]
            return store.events_for(conn, [patient_pk], idents)

    def work_queue(self, *, status: str | None = "open") -> list[dict[str, Any]]:
        with self.index.read() as conn:
            return store.work_items(conn, status=status)

    def add_work_item(
        self, kind: str, detail: str, *, conn: Connection | None = None, **fields: Any
    ) -> int:
        return self._write(
            conn, lambda c: store.add_work_item(c, kind=kind, detail=detail, **fields)
        )

    def resolve_work_item(self, pk: int, principal: Principal) -> None:
        if not self.index.write(lambda c: store.resolve_work_item(c, pk, principal.describe())):
            raise NotFound(f"no open work item {pk}")

    # -- reads for the FHIR and launch adapters ---------------------------------------------

    def record(self, patient_pk: int) -> dict[str, Any] | None:
        """One record with its retired identifiers, linked records and contact details."""
        with self.index.read() as conn:
            row = store.get_patient(conn, patient_pk)
            if row is None:
                return None
            return {
                "record": row,
                "retired": store.retired_of(conn, [patient_pk]),
                "linked": sorted(self._component(conn, patient_pk) - {patient_pk}),
                "contact": store.get_contact(conn, patient_pk),
            }

    def records_by_nhs_number(self, number: str) -> list[int]:
        """Records carrying this valid NHS number (traced or not: what each trust says)."""
        with self.index.read() as conn:
            return [
                int(r["pk"])
                for r in store.patients_by_nhs(conn, nhs.normalise(number))
                if r["nhs_number_valid"]
            ]

    def studies(self, pks: Iterable[int]) -> list[dict[str, Any]]:
        """Studies of these records, newest first, each with its own record's identifiers."""
        with self.index.read() as conn:
            return store.studies_of(conn, pks)

    def study(self, study_uid: str) -> dict[str, Any] | None:
        with self.index.read() as conn:
            return store.study_by_uid(conn, study_uid)

    def study_summary(self, study_pk: int) -> dict[str, Any] | None:
        """One study as ``studies`` lists it (with its record's identifiers)."""
        with self.index.read() as conn:
            row = store.study_by_pk(conn, study_pk)
            if row is None:
                return None
            for s in store.studies_of(conn, [int(row["patient_pk"])]):
                if s["study_pk"] == study_pk:
                    return s
            return None

    def studies_by_accession(self, accession: str, issuer: str) -> list[dict[str, Any]]:
        with self.index.read() as conn:
            return store.studies_by_accession(conn, accession, issuer)

    def series(self, study_pk: int) -> list[dict[str, Any]]:
        with self.index.read() as conn:
            return store.series_of(conn, study_pk)

    # -- the person view -------------------------------------------------------------------

    def person(self, pks: Iterable[int]) -> dict[str, Any]:
        """Records, retired identifiers, studies and open work items of a set of records."""
        keys = set(pks)
        with self.index.read() as conn:
            records = []
            for row in store.get_patients(conn, keys):
                contact = store.get_contact(conn, int(row["pk"]))
                rec = {**_snapshot(row), "patient_pk": int(row["pk"])}
                rec["nhs_number_status"] = contact["nhs_number_status"] if contact else None
                if contact and not contact["sensitive"]:
                    rec["address"], rec["phone"] = contact["address"], contact["phone"]
                records.append(rec)
            retired = [
                {
                    "issuer": r["issuer"],
                    "local_id": r["local_id"],
                    "reason": r["reason"],
                    "patient_pk": int(r["patient_pk"]),
                }
                for r in store.retired_of(conn, keys)
            ]
            studies = store.studies_of(conn, keys)
            items = store.work_items(conn, status="open", patient_pks=keys)
        return {
            "records": records,
            "retired_identifiers": retired,
            "studies": studies,
            "work_items": items,
        }


def key_dict(key: PatientKey) -> dict[str, str]:
    return asdict(key)
