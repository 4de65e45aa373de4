"""Record updates from the trusts' feeds (ADT A01/A04/A08/A28/A31, orders): demographics,
NHS numbers and what a change does to the links, each change recorded before and after."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from solent.domain import nhs_number as nhs
from solent.index import identity as store
from solent.services.audit import AuditAction, AuditTrail, PatientRef, audit_fields
from solent.services.identity.model import (
    DEMOGRAPHIC_FIELDS,
    LINK_FIELDS,
    VERIFIED,
    Change,
    Demographics,
    IdentityRejected,
    PatientKey,
    _conflict,
    _key,
    check_widths,
    is_placeholder,
    require_speaks_for,
)
from solent.services.identity.reads import IdentityReads


class RecordUpdates(IdentityReads):
    # -- changes from the trusts' feeds ----------------------------------------------------------

    def update_record(
        self,
        key: PatientKey,
        demo: Demographics,
        change: Change,
        *,
        conn: Connection | None = None,
        create: bool = True,
        mother: PatientKey | None = None,
    ) -> int:
        """A01/A04/A08/A28/A31: the sending trust updates its own record (created if new).

        ``mother`` (PID-21, R58): the record is a baby's and this is its mother's. Recorded
        as a relationship before the demographics are judged, so the two are never linked
        (an ``unlinked`` decision blocks their NHS-number link; an explicit link is undone)
        and a shared NHS number is queued as a mother-and-baby item, not a duplicate."""
        require_speaks_for(change.principal, f"update of {key}", key.issuer)
        check_widths(key, demo)

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
            if mother is not None:
                self._note_mother(c, row, mother, change)
            self._apply_demographics(c, row, demo, change)
            if mother is not None:
                self._keep_relatives_apart(c, int(row["pk"]), change)
            return int(row["pk"])

        return self._write(conn, op)

    def _note_mother(
        self, conn: Connection, row: dict[str, Any], mother: PatientKey, change: Change
    ) -> None:
        if (mother.issuer, mother.local_id) == (row["issuer"], row["local_id"]):
            raise IdentityRejected(f"PID-21 names the baby's own record {_key(row)}")
        pk = int(row["pk"])
        changed, replaced = store.set_relation(
            conn, pk, "mother", (mother.issuer, mother.local_id), "hl7:PID-21", change.actor
        )
        if not changed:
            return  # already recorded (an A08 repeating PID-21)
        store.add_event(
            conn,
            kind="relationship",
            actor=change.actor,
            patient_pk=pk,
            issuer=row["issuer"],
            local_id=row["local_id"],
            message_pk=change.message_pk,
            before=(
                {"mother": f"{replaced['related_local_id']}/{replaced['related_issuer']}"}
                if replaced
                else None
            ),
            after={"mother": str(mother)},
        )
        self._audit(conn, change, row, {"change": "relationship", "mother": str(mother)})

    def _keep_relatives_apart(self, conn: Connection, pk: int, change: Change) -> None:
        """Undo and block any link between this record and its relatives (an ``unlinked``
        decision: the NHS-number link walk then never joins them); queue a shared number."""
        before = self._component(conn, pk)
        row = store.get_patient(conn, pk)
        assert row is not None
        for relationship, other in self._relatives(conn, pk):
            link = store.get_link(conn, pk, other)
            if link is None or link["status"] != "unlinked":
                store.set_link(conn, pk, other, "unlinked", "hl7:PID-21", change.actor)
            them = store.get_patient(conn, other)
            if them is not None and row["nhs_number"] and row["nhs_number"] == them["nhs_number"]:
                self._queue_shared_number(conn, row, them, relationship, change)
        self._record_link_change(conn, pk, before, change, "hl7:PID-21")

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
        *,
        audit: bool = True,
    ) -> list[str]:
        """Apply what the message says of the record; returns the fields changed. ``audit``
        False: the caller's own record of the change names them (one record per message)."""
        pk = int(row["pk"])
        store.lock_patient(conn, pk)
        values: dict[str, Any] = {}
        for name in DEMOGRAPHIC_FIELDS:
            new = getattr(demo, name)
            if new is not None and new != row[name]:
                values[name] = new
        traced = demo.nhs_status == VERIFIED
        if values and not traced and store.pds_demographics(conn, pk):
            self._keep_pds_demographics(conn, row, values, change)
            values = {}
        values.update(self._nhs_values(conn, row, demo, change))
        if (
            traced
            and values.get("nhs_number_verified", row["nhs_number_verified"])
            and not store.pds_demographics(conn, pk)
        ):
            # R6: sent traced, so PDS's from now on. Alone, it changes nothing anyone sees
            # (no event, no new modification time for outgoing headers).
            if values:
                values["pds_demographics"] = True
            else:
                store.mark_pds_demographics(conn, pk)
        # Links depend only on the NHS number, its status, date of birth and sex: when none
        # of those changed, neither did the links (the common A08), so skip the graph walk.
        if linked_before is None and LINK_FIELDS & values.keys():
            linked_before = self._component(conn, pk)
        if values:
            before = {k: row.get(k, False) for k in values}  # pds_demographics: not in row
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
            if audit:
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
        contact.update(_retention_inputs(store.get_contact(conn, pk), demo))
        if contact:
            store.upsert_contact(conn, pk, contact)
        if linked_before is not None:
            self._review(conn, pk, change, linked_before)
        return sorted(values)

    def _keep_pds_demographics(
        self, conn: Connection, row: dict[str, Any], refused: dict[str, Any], change: Change
    ) -> None:
        """R6: name, date of birth and sex last sent with the NHS number traced on PDS (the
        trust's PAS traced the person and sends PDS's demographics with status NSTS01) came
        from PDS; an update that is not itself traced (PID-32 other than NSTS01, or none) is a
        local edit and does not overwrite them, even after the number's status dropped. The
        edit is queued for people to look at."""
        proposed = ", ".join(f"{k} {v!r}" for k, v in sorted(refused.items()))
        store.add_work_item(
            conn,
            kind="pds-demographics-kept",
            detail=(
                f"record {_key(row)} holds demographics sent traced on PDS (NHS number "
                f"{row['nhs_number']}, NSTS01); an update without a traced NHS number would "
                f"change {proposed}; not applied. Trace the patient on PDS at the trust's PAS "
                "and resend it with status NSTS01"
            ),
            issuer=row["issuer"],
            local_id=row["local_id"],
            patient_pk=int(row["pk"]),
            nhs_number=row["nhs_number"],
            message_pk=change.message_pk,
        )

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
        elif (found := nhs.range_finding(number, production=self._production)) is not None:
            # R2: outside the issued ranges is a warning (kept, linked if traced); a test
            # number on a live archive names nobody, so it is kept but never links.
            valid = found.linkable
            store.add_work_item(
                conn, kind=found.kind, nhs_number=number, detail=found.reason, **item
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
        relatives = dict((other, rel) for rel, other in self._relatives(conn, pk))
        for kin in relatives:  # R58: a record created or traced after the relationship
            if store.get_link(conn, pk, kin) is None:
                store.set_link(conn, pk, kin, "unlinked", "hl7:PID-21", change.actor)
        if row["nhs_number"] and row["nhs_number_valid"]:
            for other in store.patients_by_nhs(conn, row["nhs_number"]):
                if int(other["pk"]) == pk or not other["nhs_number_valid"]:
                    continue
                if int(other["pk"]) in relatives:
                    self._queue_shared_number(conn, row, other, relatives[int(other["pk"])], change)
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

    def _queue_shared_number(
        self,
        conn: Connection,
        row: dict[str, Any],
        other: dict[str, Any],
        relationship: str,
        change: Change,
    ) -> None:
        """R12/R58: a mother and baby with one NHS number (a baby registered under its
        mother's number): never linked, a person corrects whichever is wrong."""
        store.add_work_item(
            conn,
            kind="mother-baby-nhs-number",
            issuer=row["issuer"],
            local_id=row["local_id"],
            patient_pk=int(row["pk"]),
            nhs_number=row["nhs_number"],
            message_pk=change.message_pk,
            detail=(
                f"{_key(row)} and its {relationship} {_key(other)} carry the same NHS number "
                f"{row['nhs_number']}; one of them is wrong. Never linked (R58)"
            ),
        )

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


def _retention_inputs(stored: dict[str, Any] | None, demo: Demographics) -> dict[str, Any]:
    """What ADT tells the retention engine (R42): PID-29 date of death (``""`` erases one
    recorded in error) and the latest visit, never moved back by a late-arriving message."""
    out: dict[str, Any] = {}
    if demo.death_date is not None:
        out["death_date"] = demo.death_date or None
    last = (stored or {}).get("last_visit")
    if demo.visit_date is not None and (last is None or demo.visit_date > last):
        out["last_visit"] = demo.visit_date
    return out
