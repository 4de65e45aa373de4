"""Identity changes a person or an EMPI asks for: merge (A40), identifier change (A47),
link and unlink (A24/A37), the S-flag and the reversal of a change."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from solent.domain.principal import Principal
from solent.errors import InvalidInput, NotFound
from solent.index import identity as store
from solent.services.identity.feeds import RecordUpdates
from solent.services.identity.model import (
    Change,
    Demographics,
    IdentityRejected,
    PatientKey,
    _key,
    _snapshot,
    require_speaks_for,
)


class IdentityService(RecordUpdates):
    """The cross-trust patient index: every job of the package, one object for app.py."""

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
        # First, whoever asks: a merge across issuers goes to the work queue (R8), from a
        # trust's own feed too (judged on the identifiers alone, so it reveals nothing).
        if source.issuer != target.issuer:
            raise IdentityRejected(
                f"merge across assigning authorities refused: MRG-1 {source} and "
                f"PID-3 {target} are issued by different trusts",
                work_item="merge-issuer-mismatch",
            )
        require_speaks_for(
            change.principal, f"merge of {source} into {target}", *_issuers(target, source)
        )

        def op(c: Connection) -> int:
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
            if src is not None and tgt is not None:
                self._refuse_relatives(c, int(src["pk"]), int(tgt["pk"]), "merged")
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
            self._index.append_event(
                c,
                "patient.merged",
                change.principal,
                trust_code=target.issuer,
                patient_pk=tpk,
                detail={"retired": source.local_id, "surviving": target.local_id, "studies": moved},
            )
            refreshed = store.get_patient(c, tpk)
            assert refreshed is not None
            fields = self._apply_demographics(
                c, refreshed, demo, change, linked_before, audit=False
            )
            merged = store.get_patient(c, tpk)
            assert merged is not None
            # One record of the message: the merge and what it changed of the survivor.
            done = {
                "change": "merge",
                "retired": str(source),
                **({"fields": fields} if fields else {}),
            }
            self._audit(c, change, merged, done)
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
        require_speaks_for(
            change.principal, f"identifier change {old} -> {new}", *_issuers(new, old)
        )

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
        self._index.append_event(
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
        verb = "link" if status == "linked" else "unlink"
        require_speaks_for(change.principal, f"{verb} of {a} and {b}", *_issuers(a, b))

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
        if status != "unlinked":
            self._refuse_relatives(conn, apk, bpk, "linked")
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
        self._index.append_event(
            conn,
            "patient.linked" if status == "linked" else "patient.unlinked",
            change.principal,
            trust_code=rows[apk]["issuer"],
            patient_pk=apk,
            detail={"with_patient_pk": bpk, "source": source},
        )
        self._record_link_change(conn, apk, linked_before, change, source)

    # -- mother and baby: a relationship, never a link or a merge (R58) ------------------------

    def _refuse_relatives(self, conn: Connection, apk: int, bpk: int, what: str) -> None:
        if bpk in self.related_pks(apk, conn=conn):
            rows = {int(r["pk"]): _key(r) for r in store.get_patients(conn, [apk, bpk])}
            raise IdentityRejected(
                f"{rows.get(apk)} and {rows.get(bpk)} are recorded as mother and baby (PID-21): "
                f"two people, never {what} (R58)",
                work_item="mother-baby-link-refused",
            )

    # -- S-flag ----------------------------------------------------------------------------

    def set_sensitive(self, key: PatientKey, sensitive: bool, change: Change) -> None:
        """Mark a record restricted on PDS (S-flag): address and telephone are then left out
        of every API view, FHIR Patient and outgoing DICOM header (R13)."""
        require_speaks_for(change.principal, f"restriction of {key}", key.issuer)

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

        self._index.write(op)

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
                self._audit(c, change, row, {"change": "reversal", "event": event_pk})
                self._record_link_change(c, int(row["pk"]), linked_before, change, "reversal")
            elif kind in ("study-moved", "series-moved", "accession-corrected"):
                edit = (ev["after"] or {}).get("study_edit")
                raise InvalidInput(
                    f"a {kind} event is reversed as a study edit: "
                    f"POST /api/identity/study-edits/{edit}/reverse"
                )
            else:
                raise InvalidInput(f"a {kind} event cannot be reversed")
            return event_pk

        return self._index.write(op)


def _issuers(*keys: PatientKey) -> list[str]:
    return [k.issuer for k in keys]
