"""Study edit and move (R57): correct a study filed under the wrong patient or order.

The one door for it. Who may: identity stewards, as for links (``identity/door.py``): a
``pacs_admin`` of the trust that issued the records, or a regional administrator (no trust).
Anyone whose role is not an administrator's is refused by role (403, whatever the study); an
administrator who does not steward the record the study is filed under gets the answer an
unknown study gets (404), so a request never tells an outsider whose record holds a study.

* A move between two records of one issuer is done at once by one steward.
* A move between records of two issuers is a request by a steward of the study's record and
  takes effect only when a second, different person who stewards either record approves it;
  the requester cannot approve their own request. Either side may refuse (or the requester
  withdraw) it, and either side may ask to reverse it once done.
* An accession correction changes the study's (accession, issuer), and with it the order and
  report the study is linked to; refused when that accession names an order of another patient
  or another stored study.
* A split (some series into a new study) or a merge (every series of one study into another)
  of studies of one record is done at once by one steward (rules in ``study_regroup.py``).
* Every done edit can be reversed: a reversal is a new edit back to the values before (a move
  back across issuers needs its second person again).

A done move changes the study row's patient; every door reads the patient through it, and
outgoing DICOM keeps the stored values in Original Attributes Sequence (outgoing_identity.py).
Each step writes one audit record per patient record it names (each naming both), an identity
event on the records (their history), and a change-feed event (``study.moved``,
``study.move-requested``, ``study.split``, ``study.merged``, ``study.accession-corrected``) for
downstream consumers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn

from pydicom.uid import generate_uid
from sqlalchemy import Connection

from solent import ttl_cache
from solent.domain.principal import Principal
from solent.errors import InvalidInput, NotFound, SolentError
from solent.index import identity as identity_store
from solent.index import study_edits as store
from solent.index.sql import Index, now
from solent.services import study_edit_rows as rows
from solent.services import study_regroup as regroup
from solent.services.access import AccessService, Permission
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail, audit_fields
from solent.services.identity import IdentityService, PatientKey

STATUSES = (store.REQUESTED, store.DONE, store.REFUSED)
#: kind -> (identity event, audit "change", change-feed kind)
NAMES = {
    store.MOVE: ("study-moved", "study moved", "study.moved"),
    store.MOVE_SERIES: ("series-moved", "series moved", "series.moved"),
    store.SPLIT: ("study-split", "study split", "study.split"),
    store.MERGE: ("studies-merged", "studies merged", "study.merged"),
    store.ACCESSION: ("accession-corrected", "accession corrected", "study.accession-corrected"),
}


class StudyEditConflict(SolentError):
    """The edit cannot be made as asked (decided already, moved meanwhile, own request, an
    accession of another patient); nothing was changed. The message says why."""


class StudyEditService:
    def __init__(
        self, index: Index, access: AccessService, audit: AuditTrail, identity: IdentityService
    ) -> None:
        self._index = index
        self._access = access
        self._audit = audit
        self._identity = identity

    # -- requests ----------------------------------------------------------------------------

    def move(
        self, principal: Principal, study_uid: str, to: PatientKey, reason: str
    ) -> dict[str, Any]:
        """Move the study to record ``to``: done now within one issuer, requested (awaiting a
        second person) across issuers."""
        self._access.require(principal, Permission.ADMIN, "moving studies between patients")
        reason = rows.reason(reason)
        with self._index.read() as conn:
            _study, holder = self._study(principal, conn, study_uid)
            target = self._identity.resolve(to.issuer, to.local_id, conn=conn)
            if target is None:
                raise NotFound(f"no patient record {to}")
            if target.patient_pk == int(holder["pk"]):
                raise StudyEditConflict(
                    f"study {study_uid} is filed under {to} already; nothing changed"
                )
            self._no_pending(conn, study_uid)
        values = {
            "kind": store.MOVE,
            "study_uid": study_uid,
            **rows.between(holder, target),
            "reason": reason,
            "requested_by": principal.describe(),
        }
        return self._request(principal, values, cross=holder["issuer"] != target.issuer)

    def move_series(
        self,
        principal: Principal,
        study_uid: str,
        series_uid: str,
        to: PatientKey,
        reason: str,
        *,
        to_study_uid: str | None = None,
    ) -> dict[str, Any]:
        """Move one series of the study to record ``to``: into a new study of its own (a new
        Study Instance UID, the study's other attributes, no accession), or into
        ``to_study_uid``, a study already filed under ``to``. The same two-person rule."""
        self._access.require(principal, Permission.ADMIN, "moving series between patients")
        reason = rows.reason(reason)
        with self._index.read() as conn:
            study, holder = self._study(principal, conn, study_uid)
            series = store.series_in(conn, series_uid)
            if series is None or series["study_uid"] != study_uid:
                raise NotFound(f"no series {series_uid} in study {study_uid}")
            target = self._identity.resolve(to.issuer, to.local_id, conn=conn)
            if target is None:
                raise NotFound(f"no patient record {to}")
            if to_study_uid is not None:
                into = identity_store.study_by_uid(conn, to_study_uid)
                if into is None or int(into["patient_pk"]) != target.patient_pk:
                    raise NotFound(f"no study {to_study_uid} of {to}")
                if to_study_uid == study_uid:
                    raise StudyEditConflict(f"series {series_uid} is in study {study_uid} already")
            else:
                if target.patient_pk == int(holder["pk"]):
                    raise StudyEditConflict(
                        f"study {study_uid} is filed under {to} already; nothing changed"
                    )
                if int(study["num_series"]) <= 1:
                    raise StudyEditConflict(
                        f"series {series_uid} is the only series of study {study_uid}: move "
                        "the study instead (POST /api/identity/studies/{study_uid}/move)"
                    )
                to_study_uid = generate_uid()
            self._no_pending(conn, study_uid)
        values = {
            "kind": store.MOVE_SERIES,
            "study_uid": study_uid,
            "series_uid": series_uid,
            "new_study_uid": to_study_uid,
            **rows.between(holder, target),
            "reason": reason,
            "requested_by": principal.describe(),
        }
        return self._request(principal, values, cross=holder["issuer"] != target.issuer)

    def split(
        self,
        principal: Principal,
        study_uid: str,
        series_uids: list[str],
        reason: str,
        *,
        accession: str | None = None,
        accession_issuer: str | None = None,
    ) -> dict[str, Any]:
        """Move these series of the study into a new study of the same record (a new Study
        Instance UID; the accession given, else none), done at once by one steward."""
        self._access.require(principal, Permission.ADMIN, "splitting studies")
        reason = rows.reason(reason)
        with self._index.read() as conn:
            study, holder = self._study(principal, conn, study_uid)
            given = None
            if (number := rows.accession(accession)) is not None:
                given = (number, self._issuer(principal, conn, study, accession_issuer))
                self._check_order(conn, {**study, "pk": None}, holder, *given)
            planned = regroup.plan_split(conn, study, series_uids, given)
            if isinstance(planned, str):
                raise StudyEditConflict(planned)
            self._no_pending(conn, study_uid)
        values = {**planned, **rows.holder(holder), "reason": reason}
        return self._request(
            principal, values | {"requested_by": principal.describe()}, cross=False
        )

    def merge(
        self, principal: Principal, study_uid: str, into_study_uid: str, reason: str
    ) -> dict[str, Any]:
        """Move every series of the study into ``into_study_uid``, a study of the same record;
        the study leaves every query (its reversal brings it back). One steward, at once."""
        self._access.require(principal, Permission.ADMIN, "merging studies")
        reason = rows.reason(reason)
        with self._index.read() as conn:
            study, holder = self._study(principal, conn, study_uid)
            into, _ = self._study(principal, conn, into_study_uid)
            planned = regroup.plan_merge(conn, study, into)
            if isinstance(planned, str):
                raise StudyEditConflict(planned)
            self._no_pending(conn, study_uid)
            self._no_pending(conn, into_study_uid)
        values = {**planned, **rows.holder(holder), "reason": reason}
        return self._request(
            principal, values | {"requested_by": principal.describe()}, cross=False
        )

    def correct_accession(
        self,
        principal: Principal,
        study_uid: str,
        accession: str,
        issuer: str | None,
        reason: str,
    ) -> dict[str, Any]:
        """Set the study's accession number (and its issuer, the trust's RIS; the study's own
        trust when not given), done at once by a steward of the study's record."""
        self._access.require(principal, Permission.ADMIN, "correcting accession numbers")
        reason = rows.reason(reason)
        number = rows.accession(accession)
        if number is None:
            raise InvalidInput("give the accession number")
        accession = number
        with self._index.read() as conn:
            study, holder = self._study(principal, conn, study_uid)
            issuer = self._issuer(principal, conn, study, issuer)
            if (study["accession_number"], study["accession_issuer"] or study["trust_code"]) == (
                accession,
                issuer,
            ):
                raise StudyEditConflict(
                    f"study {study_uid} carries accession {accession} of {issuer} already"
                )
            self._no_pending(conn, study_uid)
            self._check_order(conn, study, holder, accession, issuer)
        values = {
            "kind": store.ACCESSION,
            "study_uid": study_uid,
            "from_patient_pk": int(holder["pk"]),
            "from_issuer": holder["issuer"],
            "from_local_id": holder["local_id"],
            "old_accession": study["accession_number"],
            "old_accession_issuer": study["accession_issuer"],
            "new_accession": accession,
            "new_accession_issuer": issuer,
            "reason": reason,
            "requested_by": principal.describe(),
        }
        return self._request(principal, values, cross=False)

    # -- decisions ---------------------------------------------------------------------------

    def approve(self, principal: Principal, edit_pk: int) -> dict[str, Any]:
        """The second person's approval of a requested cross-issuer move."""
        self._access.require(principal, Permission.ADMIN, "approving study moves")
        with self._index.read() as conn:
            edit = self._edit(principal, conn, edit_pk)
        if edit["status"] != store.REQUESTED:
            self._refused(principal, edit, "approve", rows.decided(edit))
        if edit["requested_by"] == principal.describe():
            self._refused(
                principal,
                edit,
                "approve",
                "a move between the records of two trusts needs a second person: the one "
                "who asked for it cannot approve it",
            )
        return self._apply(principal, edit)

    def refuse(self, principal: Principal, edit_pk: int, reason: str) -> dict[str, Any]:
        """Refuse a requested move (or withdraw one's own request); nothing moves."""
        self._access.require(principal, Permission.ADMIN, "refusing study moves")
        reason = rows.reason(reason)
        with self._index.read() as conn:
            edit = self._edit(principal, conn, edit_pk)
        if edit["status"] != store.REQUESTED:
            self._refused(principal, edit, "refuse", rows.decided(edit))

        def op(conn: Connection) -> bool:
            if not store.decide(conn, edit_pk, store.REFUSED, principal.describe()):
                return False
            self._trail(conn, principal, edit, "move refused", {"refusal": reason})
            return True

        if not self._index.write(op):
            self._refused(principal, edit, "refuse", f"edit {edit_pk} was decided meanwhile")
        return rows.view(self._reread(edit_pk))

    def reverse(self, principal: Principal, edit_pk: int, reason: str) -> dict[str, Any]:
        """Undo a done edit: a new edit back to the values before (moved back, or the old
        accession), with the same rules as any edit."""
        self._access.require(principal, Permission.ADMIN, "reversing study edits")
        reason = rows.reason(reason)
        with self._index.read() as conn:
            edit = self._edit(principal, conn, edit_pk)
        if edit["status"] != store.DONE:
            self._refused(principal, edit, "reverse", "only a done edit can be reversed")
        if edit["reversed_by"] is not None:
            self._refused(
                principal, edit, "reverse", f"it was reversed already by edit {edit['reversed_by']}"
            )
        later = "the study was moved again (or a record merged) since; reverse the later edit first"
        if edit["kind"] in store.REGROUPS:
            return self._reverse_regroup(principal, edit, reason)
        with self._index.read() as conn:
            now_in = edit["study_uid"]
            if edit["kind"] == store.MOVE_SERIES:
                series = store.series_in(conn, edit["series_uid"])
                if series is None or series["study_uid"] != edit["new_study_uid"]:
                    self._refused(principal, edit, "reverse", later)
                now_in = edit["new_study_uid"]
            study = identity_store.study_by_uid(conn, now_in)
            if study is None:
                raise NotFound(f"no study edit {edit_pk}")
            self._no_pending(conn, now_in)
            holder_pk = int(study["patient_pk"])
            back: dict[str, Any] | None = None
            if edit["kind"] in store.MOVES:
                back = identity_store.get_patient(conn, int(edit["from_patient_pk"]))
                if holder_pk != edit["to_patient_pk"] or back is None:
                    self._refused(principal, edit, "reverse", later)
                if edit["kind"] == store.MOVE_SERIES:
                    origin = identity_store.study_by_uid(conn, edit["study_uid"])
                    if origin is None or int(origin["patient_pk"]) != int(back["pk"]):
                        self._refused(principal, edit, "reverse", later)
            elif (study["accession_number"], study["accession_issuer"]) != (
                edit["new_accession"],
                edit["new_accession_issuer"],
            ):
                self._refused(principal, edit, "reverse", "the accession was corrected again since")
            holder = identity_store.get_patient(conn, holder_pk)
            assert holder is not None
        values: dict[str, Any] = {
            "kind": edit["kind"],
            "study_uid": now_in,
            "from_patient_pk": holder_pk,
            "from_issuer": holder["issuer"],
            "from_local_id": holder["local_id"],
            "reason": reason,
            "reverses": edit_pk,
            "requested_by": principal.describe(),
        }
        cross = False
        if back is not None:
            values |= {
                "to_patient_pk": int(back["pk"]),
                "to_issuer": back["issuer"],
                "to_local_id": back["local_id"],
            }
            if edit["kind"] == store.MOVE_SERIES:
                values |= {"series_uid": edit["series_uid"], "new_study_uid": edit["study_uid"]}
            cross = holder["issuer"] != back["issuer"]
        else:
            values |= {
                "old_accession": edit["new_accession"],
                "old_accession_issuer": edit["new_accession_issuer"],
                "new_accession": edit["old_accession"],
                "new_accession_issuer": edit["old_accession_issuer"],
            }
        return self._request(principal, values, cross=cross)

    def _reverse_regroup(
        self, principal: Principal, edit: dict[str, Any], reason: str
    ) -> dict[str, Any]:
        """A split or merge undone: the same series moved back, as a new edit."""
        with self._index.read() as conn:
            values, why = regroup.reversal(conn, edit)
            if why is not None:
                self._refused(principal, edit, "reverse", why)
            self._no_pending(conn, values["study_uid"])
            self._no_pending(conn, values["new_study_uid"])
        values |= {
            **{k: edit[k] for k in ("from_patient_pk", "from_issuer", "from_local_id")},
            "reason": reason,
            "reverses": edit["pk"],
            "requested_by": principal.describe(),
        }
        return self._request(principal, values, cross=False)

    # -- reads -------------------------------------------------------------------------------

    def list(
        self,
        principal: Principal,
        *,
        study_uid: str | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        """Edits the caller stewards (either record), oldest first: of one study, or all of a
        status (``requested``: the moves waiting for a second person). Identifiers only."""
        self._access.require(principal, Permission.ADMIN, "listing study edits")
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status is one of {', '.join(STATUSES)}")
        with self._index.read() as conn:
            if study_uid is not None:
                self._study(principal, conn, study_uid)
            found = store.edits(conn, study_uid=study_uid, status=status)
        shown = [r for r in found if self._stewards_any(principal, rows.issuers(r))]
        for row in shown:
            self._audit.record(
                principal,
                AuditAction.QUERY,
                patient=rows.record_ref(row, "from"),
                study_uid=row["study_uid"],
                detail={"read": "study-edit", "edit": row["pk"]},
            )
        return [rows.view(r) for r in shown]

    # -- inside ------------------------------------------------------------------------------

    def _request(
        self, principal: Principal, values: dict[str, Any], *, cross: bool
    ) -> dict[str, Any]:
        """Write the edit: requested (cross-issuer moves) or applied at once."""
        status = store.REQUESTED if cross else store.DONE
        if cross:

            def ask(conn: Connection) -> int:
                store.lock(
                    conn,
                    [values["study_uid"]],
                    [values["from_patient_pk"], values.get("to_patient_pk")],
                )
                if store.pending_for(conn, values["study_uid"]) is not None:
                    raise StudyEditConflict(rows.pending_text(values["study_uid"]))
                pk = store.add_edit(conn, status=status, **values)
                edit = store.get_edit(conn, pk)
                assert edit is not None
                self._trail(conn, principal, edit, "move requested", {})
                return pk

            return rows.view(self._reread(self._index.write(ask)))
        return self._apply(principal, values)

    def _apply(self, principal: Principal, edit: dict[str, Any]) -> dict[str, Any]:
        """Make the edit take effect in one transaction with its records (audit, identity
        event, change feed); a new edit row when ``edit`` has no pk (one person's edit)."""

        def op(conn: Connection) -> int:
            # An accession given (not one restored by a reversal) was checked when asked for
            # to name no other stored study nor another person's order: checked again here.
            given = edit.get("new_accession") is not None and edit.get("reverses") is None
            given = given and edit["kind"] in (store.ACCESSION, store.SPLIT)
            # Everything below is read after these locks: a concurrent edit of the same
            # studies or records has committed (and is seen) or waits for this one.
            store.lock(
                conn,
                [edit["study_uid"], edit.get("new_study_uid")],
                [edit["from_patient_pk"], edit.get("to_patient_pk")],
                accession_issuer=edit["new_accession_issuer"] if given else None,
            )
            study = identity_store.study_by_uid(conn, edit["study_uid"])
            if study is None:  # it was there when the edit was asked for
                raise StudyEditConflict(
                    f"{regroup.gone(conn, edit['study_uid'])} meanwhile; nothing changed"
                )
            if given:
                holder = identity_store.get_patient(conn, int(edit["from_patient_pk"]))
                if holder is None:
                    raise StudyEditConflict(
                        f"study {edit['study_uid']}: its patient record was merged meanwhile; "
                        "nothing changed"
                    )
                receiver = study if edit["kind"] == store.ACCESSION else {**study, "pk": None}
                self._check_order(
                    conn, receiver, holder, edit["new_accession"], edit["new_accession_issuer"]
                )
            values = dict(edit)
            if edit["kind"] in store.REGROUPS:
                for uid in (edit["study_uid"], edit["new_study_uid"]):  # asked for meanwhile
                    if store.pending_for(conn, uid) is not None:
                        raise StudyEditConflict(rows.pending_text(uid))
                moved = regroup.refile(conn, study, edit)
                done = not isinstance(moved, str)
                why = f"{moved}; nothing changed" if isinstance(moved, str) else ""
                values["series_uids"] = moved
            elif edit["kind"] == store.MOVE:
                done = store.refile_study(
                    conn, int(study["pk"]), int(edit["from_patient_pk"]), int(edit["to_patient_pk"])
                )
                why = "the study was moved (or its record merged) meanwhile; nothing changed"
            elif edit["kind"] == store.MOVE_SERIES:
                not_done = regroup.refile_one(conn, study, edit)
                done = not_done is None
                why = f"{not_done}; nothing changed"
            else:
                done = store.set_accession(
                    conn,
                    int(study["pk"]),
                    (edit["old_accession"], edit["old_accession_issuer"]),
                    (edit["new_accession"], edit["new_accession_issuer"]),
                )
                why = "its accession was changed meanwhile; nothing changed"
            if not done:
                raise StudyEditConflict(f"study {edit['study_uid']}: {why}")
            if "pk" in edit:
                pk = int(edit["pk"])
                if not store.decide(conn, pk, store.DONE, principal.describe()):
                    raise StudyEditConflict(f"edit {pk} was decided meanwhile")
            else:
                pk = store.add_edit(
                    conn,
                    status=store.DONE,
                    decided_by=principal.describe(),
                    decided_at=now(),
                    **values,
                )
            row = store.get_edit(conn, pk)
            assert row is not None
            if row["reverses"] is not None:
                store.mark_reversed(conn, int(row["reverses"]), pk)
            event, change, feed = NAMES[row["kind"]]
            identity_store.add_event(
                conn,
                kind=event,
                actor=principal.describe(),
                patient_pk=int(row["from_patient_pk"]),
                other_patient_pk=row["to_patient_pk"],
                issuer=row["from_issuer"],
                local_id=row["from_local_id"],
                before=rows.state(row, "before"),
                after={**rows.state(row, "after"), "study_edit": pk},
            )
            self._trail(conn, principal, row, change, {})
            self._index.append_event(
                conn,
                feed,
                principal,
                trust_code=study["trust_code"],
                patient_pk=row["to_patient_pk"] or row["from_patient_pk"],
                study_uid=row["study_uid"],
                series_uid=row["series_uid"],
                detail=rows.feed_detail(row),
            )
            return pk

        try:
            pk = self._index.write(op)
        except StudyEditConflict as exc:
            self._refused(principal, edit, "apply", str(exc))
        # Who may see the study changed: this process drops its remembered access decisions
        # now (other nodes hear it from the database: study.patient_pk is watched, 0005).
        ttl_cache.invalidate_all()
        return rows.view(self._reread(pk))

    def _trail(
        self,
        conn: Connection,
        principal: Principal,
        edit: dict[str, Any],
        change: str,
        extra: dict[str, Any],
        outcome: AuditOutcome = AuditOutcome.SUCCESS,
    ) -> None:
        """One audit record per patient record the edit names, each naming both; and the
        change feed hears of requests and refusals too (a RIS may show them)."""
        detail = {**rows.about(edit), "change": change, **extra}
        action = (
            AuditAction.ORDER_RECORD
            if edit["kind"] == store.ACCESSION
            else AuditAction.PATIENT_RECORD
        )
        for side in ("from", "to"):
            ref = rows.record_ref(edit, side)
            if ref is None:
                continue
            AuditTrail.append_in(
                conn,
                audit_fields(
                    principal,
                    action,
                    outcome,
                    patient=ref,
                    study_uid=edit["study_uid"],
                    detail=detail,
                ),
            )
        if change in ("move requested", "move refused"):
            self._index.append_event(
                conn,
                "study.move-requested" if change == "move requested" else "study.move-refused",
                principal,
                patient_pk=edit["from_patient_pk"],
                study_uid=edit["study_uid"],
                detail=rows.feed_detail(edit),
            )

    def _refused(self, principal: Principal, edit: dict[str, Any], what: str, why: str) -> NoReturn:
        """Audit the refusal (one record per patient named) and raise; nothing else changes."""

        def op(conn: Connection) -> None:
            self._trail(
                conn,
                principal,
                edit,
                f"{what} refused",
                {"refusal": why},
                AuditOutcome.FAILURE,
            )

        self._index.write(op)
        name = f"edit {edit['pk']}" if "pk" in edit else f"the edit of study {edit['study_uid']}"
        raise StudyEditConflict(f"{name} cannot be {what}d: {why}" if what != "apply" else why)

    def _study(
        self, principal: Principal, conn: Connection, study_uid: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The study and the record it is filed under, when the caller stewards that record;
        else the answer an unknown study gets. Only the holder's stewards ask to move a study:
        anyone else would learn from the answer whose record holds it."""
        missing = NotFound(f"no study {study_uid}")
        study = identity_store.study_by_uid(conn, study_uid)
        if study is None:
            raise missing
        holder = identity_store.get_patient(conn, int(study["patient_pk"]))
        if holder is None or not self._stewards_any(principal, [holder["issuer"]]):
            raise missing
        return study, holder

    def _edit(self, principal: Principal, conn: Connection, edit_pk: int) -> dict[str, Any]:
        # A number no database key can be is no edit (it overflowed the driver: a traceback).
        edit = store.get_edit(conn, edit_pk) if 0 < edit_pk <= rows.MAX_KEY else None
        if edit is None or not self._stewards_any(principal, rows.issuers(edit)):
            raise NotFound(f"no study edit {edit_pk}")
        return edit

    def _reread(self, pk: int) -> dict[str, Any]:
        with self._index.read() as conn:
            edit = store.get_edit(conn, pk)
        assert edit is not None
        return edit

    def _no_pending(self, conn: Connection, study_uid: str) -> None:
        if store.pending_for(conn, study_uid) is not None:
            raise StudyEditConflict(rows.pending_text(study_uid))

    def _check_order(
        self,
        conn: Connection,
        study: dict[str, Any],
        holder: dict[str, Any],
        accession: str,
        issuer: str,
    ) -> None:
        """The accession must not be another stored study's, nor an order of another person."""
        others = [
            s
            for s in identity_store.studies_by_accession(conn, accession, issuer)
            if s["pk"] != study["pk"]
        ]
        if others:
            raise StudyEditConflict(
                f"accession {accession} of {issuer} is carried by another stored study; "
                "correct that study first"
            )
        named = store.order_patient(conn, accession, issuer)
        if named is None:
            return
        record = self._identity.resolve(named[0], named[1], conn=conn)
        same = self._identity.linked_patient_pks(int(holder["pk"]), conn=conn) | {int(holder["pk"])}
        if record is None or record.patient_pk not in same:
            raise StudyEditConflict(
                f"order {accession} of {issuer} is for another patient record; move the study "
                "to that patient first if it is theirs"
            )

    def _issuer(
        self, principal: Principal, conn: Connection, study: dict[str, Any], issuer: str | None
    ) -> str:
        """The issuer of an accession given for the study: the study's trust when none; else
        a trust (an accession is a trust RIS's number) that is the study's, its accession's
        now, or one the caller administers. Any other would put the study in another trust's
        orders, and the answer would tell the caller which of that trust's accessions exist."""
        issuer = (issuer or "").strip()
        if not issuer:
            return str(study["trust_code"])
        own = issuer in (study["trust_code"], study["accession_issuer"])
        if not (own or self._stewards_any(principal, [issuer])) or not (
            len(issuer) <= rows.ISSUER_MAX and identity_store.trust_exists(conn, issuer)
        ):
            raise InvalidInput(
                f"accession issuer {issuer[: rows.ISSUER_MAX]!r} is no trust whose accession "
                "numbers you may give: the study's trust, or a trust you administer"
            )
        return issuer

    def _stewards_any(self, principal: Principal, issuers: Iterable[str | None]) -> bool:
        """The caller administers at least one of these trusts' records (a regional
        administrator, no trust, administers all)."""
        if principal.trust is None:
            return True
        trusts = self._access.scope(principal).trusts
        return any(i is not None and i in trusts for i in issuers)
