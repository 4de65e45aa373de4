"""The HL7 inbox: every message is journalled before it is acknowledged, applied in one
transaction together with its journal status, and a replay (same sender and control ID)
changes nothing. Also files orders (worklist) and reports (versions, unmatched queue).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DataError

from solent.domain.principal import Principal, PrincipalKind
from solent.errors import SolentError
from solent.index import hl7 as store
from solent.index import identity as ids
from solent.index.orders import find_orders, upsert_order
from solent.index.sql import Index
from solent.services.access import AccessDenied
from solent.services.audit import AuditAction, AuditTrail, PatientRef, audit_fields
from solent.services.identity import (
    Change,
    Demographics,
    IdentityRejected,
    IdentityService,
    PatientKey,
    Resolved,
)
from solent.services.identity.model import require_speaks_for
from solent.services.procedures import ProcedureCoding

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to acknowledge: AA, AE or AR, with a reason people can read."""

    code: str
    detail: str
    duplicate: bool = False


class Rejected(SolentError):
    """The message is refused (AE/AR) and its effects rolled back; may queue a work item."""

    def __init__(
        self, code: str, reason: str, *, work_item: str | None = None, held: bool = False
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.work_item = work_item
        self.held = held


class Hl7Transaction:
    """The changes one HL7 message may make, bound to the transaction that also marks it
    applied: the adapter says what the message means, and never holds the connection."""

    def __init__(self, conn: Connection, inbox: InboxService, change: Change) -> None:
        self._conn = conn
        self._inbox = inbox
        self._identity = inbox._identity
        self.change = change

    def resolve(self, issuer: str, local_id: str) -> Resolved | None:
        return self._identity.resolve(issuer, local_id, conn=self._conn)

    def update_record(
        self, key: PatientKey, demographics: Demographics, mother: PatientKey | None = None
    ) -> None:
        self._identity.update_record(key, demographics, self.change, conn=self._conn, mother=mother)

    def merge(
        self,
        target: PatientKey,
        source: PatientKey,
        demographics: Demographics,
        prior_name: str | None,
    ) -> None:
        self._identity.merge(
            target, source, demographics, self.change, prior_name=prior_name, conn=self._conn
        )

    def change_identifier(self, new: PatientKey, old: PatientKey) -> None:
        self._identity.change_identifier(new, old, self.change, conn=self._conn)

    def link(self, a: PatientKey, b: PatientKey, source: str) -> None:
        self._identity.link(a, b, self.change, source=source, conn=self._conn)

    def unlink(self, a: PatientKey, b: PatientKey, source: str) -> None:
        self._identity.unlink(a, b, self.change, source=source, conn=self._conn)

    def admitted(self, key: PatientKey) -> None:
        """ADT^A01: the patient was admitted (a prefetch trigger, R47)."""
        found = self.resolve(key.issuer, key.local_id)
        if found is not None:
            self._inbox._index.append_event(
                self._conn,
                "patient.admitted",
                self.change.principal,
                trust_code=key.issuer,
                patient_pk=found.patient_pk,
            )

    def place_order(self, order: dict[str, Any], context: dict[str, Any]) -> str:
        return self._inbox._place_order(self._conn, self.change, order, context)

    def order_status(
        self,
        accession: str,
        issuer: str,
        status: str,
        context: dict[str, Any],
        patient: PatientKey,
    ) -> str:
        return self._inbox._order_status(
            self._conn, self.change, accession, issuer, status, context, patient
        )

    def file_report(self, report: dict[str, Any], patient: PatientKey) -> str:
        return self._inbox._file_report(self._conn, self.change, report, patient)


Apply = Callable[[Hl7Transaction], str]


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str | None
    control_id: str | None
    message_type: str | None
    raw: str
    remote_address: str | None
    issuer: str | None = None  # sending trust, for work items


class InboxService:
    def __init__(
        self, index: Index, identity: IdentityService, coding: ProcedureCoding | None = None
    ) -> None:
        self._index = index
        self._identity = identity
        self._audit = AuditTrail(index)
        #: R19: an order's procedure code is mapped by the consortium's table when filed.
        self._coding = coding or ProcedureCoding(index)

    # -- journal ---------------------------------------------------------------------------

    def journal(self, env: Envelope) -> tuple[int, dict[str, Any] | None]:
        """Persist the message (committed); returns its pk and, for a replay, the earlier row."""

        def op(conn: Connection) -> tuple[int, dict[str, Any] | None]:
            pk, new = store.journal_message(
                conn,
                sender=env.sender,
                control_id=env.control_id,
                message_type=env.message_type,
                raw=env.raw,
                remote_address=env.remote_address,
            )
            return pk, None if new else store.get_message(conn, pk)

        return self._index.write(op)

    def reject_unjournalled(self, env: Envelope, code: str, reason: str) -> None:
        """Keep a message we could not even read, as rejected (dead letters stay visible)."""

        def op(conn: Connection) -> None:
            pk, _ = store.journal_message(
                conn,
                sender=env.sender,
                control_id=env.control_id,
                message_type=env.message_type,
                raw=env.raw,
                remote_address=env.remote_address,
            )
            store.finish_message(conn, pk, "rejected", code, reason)

        self._index.write(op)

    def process(self, env: Envelope, change_for: Callable[[int], Change], apply: Apply) -> Outcome:
        """Journal, then apply and mark applied in one transaction; AA only after commit."""
        pk, earlier = self.journal(env)
        if earlier is not None and not same_message(earlier["raw"], env.raw):
            return self._control_id_reused(env, earlier)
        if earlier is not None and earlier["status"] != "received":
            return Outcome(
                earlier["ack_code"] or "AA",
                f"duplicate of message {env.control_id} already processed: "
                f"{earlier['detail'] or earlier['status']}",
                duplicate=True,
            )
        return self.apply_journalled(pk, env, change_for(pk), apply)

    def _control_id_reused(self, env: Envelope, earlier: dict[str, Any]) -> Outcome:
        """Another message under a control ID this sender already used: never applied (a
        resend must be the same message) and never acknowledged AA, which would tell the
        sender it was applied; kept as a rejected message with a work item."""
        reason = (
            f"MSH-10 control ID {env.control_id} was already used by {env.sender} for a "
            f"different message (received {str(earlier['received_at'])[:19]}); not applied: "
            "resend it under a new control ID"
        )

        def op(conn: Connection) -> None:
            pk, _ = store.journal_message(
                conn,
                sender=env.sender,
                control_id=None,  # the (sender, control ID) key is the earlier message's
                message_type=env.message_type,
                raw=env.raw,
                remote_address=env.remote_address,
            )
            store.finish_message(conn, pk, "rejected", "AE", reason)
            ids.add_work_item(
                conn, kind="control-id-reused", detail=reason, issuer=env.issuer, message_pk=pk
            )

        self._index.write(op)
        log.warning("HL7 %s from %s: %s", env.message_type, env.sender, reason)
        return Outcome("AE", reason)

    def apply_journalled(self, pk: int, env: Envelope, change: Change, apply: Apply) -> Outcome:
        def op(conn: Connection) -> str:
            detail = apply(Hl7Transaction(conn, self, change))
            store.finish_message(conn, pk, "applied", "AA", detail)
            return detail

        try:
            return Outcome("AA", self._index.write(op))
        except (Rejected, IdentityRejected, DataError) as exc:
            if isinstance(exc, DataError):  # a value the database cannot hold (too long...)
                exc = Rejected("AE", f"a value of the message does not fit: {_first_line(exc)}")
            code = exc.code if isinstance(exc, Rejected) else "AE"
            reason = exc.reason if isinstance(exc, Rejected) else str(exc)
            status = "held" if exc.held else "rejected"
            item = exc.work_item

            def mark(conn: Connection) -> None:
                store.finish_message(conn, pk, status, code, reason)
                if item:
                    ids.add_work_item(
                        conn, kind=item, detail=reason, issuer=env.issuer, message_pk=pk
                    )

            self._index.write(mark)
            return Outcome(code, reason)

    def pending(self, principal: Principal) -> list[dict[str, Any]]:
        """Messages journalled but never applied (the process died in between), for the
        listener's own recovery at start: the node itself only (each change it re-applies is
        audited under the sender's principal)."""
        if principal.kind is not PrincipalKind.SYSTEM:
            raise AccessDenied("only the server itself re-applies journalled HL7 messages")
        with self._index.read() as conn:
            out = []
            for pk in store.pending_message_pks(conn):
                row = store.get_message(conn, pk)
                if row is not None:
                    out.append(row)
            return out

    # -- orders ----------------------------------------------------------------------------

    def _place_order(
        self, conn: Connection, change: Change, order: dict[str, Any], context: dict[str, Any]
    ) -> str:
        require_speaks_for(change.principal, "an order", str(order["patient_issuer"]))
        new = store.upsert_order(conn, order)
        context = {
            **context,
            **self._coding.order_columns(
                str(order["accession_issuer"]),
                context.get("procedure_coding_system"),
                context.get("procedure_code"),
                order.get("requested_procedure_description"),
            ),
        }
        store.upsert_order_context(conn, context)
        self._index.append_event(
            conn,
            "order.placed" if new else "order.updated",
            change.principal,
            trust_code=order["patient_issuer"],
            study_uid=order["study_instance_uid"],
            detail={"accession": order["accession_number"], "issuer": order["accession_issuer"]},
        )
        action = "created" if new else "updated"
        _audit_in(
            conn,
            change,
            PatientRef(order["patient_issuer"], order["patient_id"], order.get("nhs_number")),
            study_uid=order["study_instance_uid"],
            detail={"order": action, "accession": order["accession_number"]},
        )
        return f"order {order['accession_number']}/{order['accession_issuer']} {action}"

    def worklist(
        self,
        principal: Principal,
        *,
        exact: Mapping[str, str],
        date_from: str | None,
        date_to: str | None,
        statuses: tuple[str, ...],
        limit: int,
    ) -> list[dict[str, Any]]:
        """Scheduled orders a modality may see: those of its own trust (Modality Worklist).
        The adapter narrows them by the remaining keys and audits the query it answered."""
        return find_orders(
            self._index,
            exact=exact,
            date_from=date_from,
            date_to=date_to,
            statuses=statuses,
            limit=limit,
            trust=principal.trust or None,
        )

    def add_order(self, principal: Principal, order: Mapping[str, Any]) -> bool:
        """An order entered by hand (`solent worklist add`); True when new. Audited."""
        new = upsert_order(self._index, order)
        if new:  # scheduled on the worklist: a prefetch trigger (R47), as an HL7 order is
            self._index.write(
                lambda conn: self._index.append_event(
                    conn,
                    "order.placed",
                    principal,
                    trust_code=str(order["patient_issuer"]),
                    study_uid=str(order["study_instance_uid"]),
                    detail={"accession": order["accession_number"], "source": "worklist"},
                )
            )
        self._audit.record(
            principal,
            AuditAction.ORDER_RECORD,
            patient=PatientRef(str(order["patient_issuer"]), str(order["patient_id"])),
            study_uid=str(order["study_instance_uid"]),
            detail={"accession": order["accession_number"], "new": new},
        )
        return new

    def _order_status(
        self,
        conn: Connection,
        change: Change,
        accession: str,
        issuer: str,
        status: str,
        context: dict[str, Any],
        patient: PatientKey,
    ) -> str:
        require_speaks_for(change.principal, "an order status", patient.issuer)
        if not store.set_order_status(conn, accession, issuer, status):
            raise Rejected("AE", f"unknown order {accession}/{issuer}: nothing to update")
        store.upsert_order_context(conn, context)
        _audit_in(
            conn,
            change,
            PatientRef(patient.issuer, patient.local_id),
            detail={"order": status, "accession": accession},
        )
        return f"order {accession}/{issuer} is now {status}"

    # -- reports ---------------------------------------------------------------------------

    def _file_report(
        self, conn: Connection, change: Change, report: dict[str, Any], patient: PatientKey
    ) -> str:
        """Store a report version; refuse it if its study belongs to another patient."""
        require_speaks_for(change.principal, "a report", patient.issuer)
        accession, issuer = report["accession_number"], report["accession_issuer"]
        studies = ids.studies_by_accession(conn, accession, issuer)
        resolved = self._identity.resolve(patient.issuer, patient.local_id, conn=conn)
        for study in studies:
            if resolved is None or int(study["patient_pk"]) != resolved.patient_pk:
                raise Rejected(
                    "AE",
                    f"report for {accession}/{issuer} names patient {patient}, but that study "
                    "is filed under another patient record; held for review",
                    work_item="report-patient-mismatch",
                )
        versions = store.reports_for(conn, accession, issuer)
        if versions:
            last = versions[-1]
            if last["text"] == report["text"] and last["status"] == report["status"]:
                return f"report {accession}/{issuer} unchanged (version {last['version']})"
        version = store.add_report_version(conn, report)
        _audit_in(
            conn,
            change,
            PatientRef(patient.issuer, patient.local_id),
            study_uid=studies[0]["study_uid"] if studies else None,
            detail={"report": version, "accession": accession, "status": report["status"]},
        )
        where = "matched to its study" if studies else "kept in the unmatched-results queue"
        return f"report {accession}/{issuer} version {version} stored, {where}"


class InboxReads:
    """Reads of the journal, orders and reports for ``RecordService``, which decides who may
    see them and audits each read; adapters never hold this (issue 11)."""

    def __init__(self, index: Index) -> None:
        self._index = index

    def messages(
        self,
        *,
        status: str | None = None,
        limit: int = 100,
        facilities: Iterable[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The newest messages; ``facilities`` keeps those of senders of these trusts only."""
        with self._index.read() as conn:
            return store.messages(conn, status=status, limit=limit, facilities=facilities)

    def reports(self, accession: str, issuer: str) -> list[dict[str, Any]]:
        with self._index.read() as conn:
            return store.reports_for(conn, accession, issuer)

    def orders(self, identifiers: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Orders of these records, each with the study it matched once images arrived."""
        with self._index.read() as conn:
            out = []
            for order in store.orders_for_patients(conn, identifiers):
                studies = ids.studies_by_accession(
                    conn, order["accession_number"], order["accession_issuer"]
                )
                by_uid = ids.study_by_uid(conn, order["study_instance_uid"])
                matched = studies[0]["study_uid"] if studies else None
                order["matched_study_uid"] = matched or (by_uid["study_uid"] if by_uid else None)
                out.append(order)
            return out

    def report(self, pk: int) -> dict[str, Any] | None:
        with self._index.read() as conn:
            return store.get_report(conn, pk)

    def unmatched_reports(self) -> list[dict[str, Any]]:
        with self._index.read() as conn:
            return store.unmatched_reports(conn)


def _audit_in(
    conn: Connection,
    change: Change,
    patient: PatientRef,
    *,
    study_uid: str | None = None,
    detail: dict[str, Any],
) -> None:
    """One ORDER_RECORD audit record of an order or report a feed changed, in the change's own
    transaction (a change is never committed without its record)."""
    AuditTrail.append_in(
        conn,
        audit_fields(
            change.principal,
            AuditAction.ORDER_RECORD,
            patient=patient,
            study_uid=study_uid,
            detail={**detail, "message_pk": change.message_pk},
        ),
    )


def same_message(earlier: str, raw: str) -> bool:
    """Whether a message is a resend of ``earlier``: the same segments, whatever the line
    endings, and whatever MSH-7 (some engines stamp the time of each send)."""
    return _comparable(earlier) == _comparable(raw)


def _comparable(raw: str) -> list[str]:
    lines = [ln.strip() for ln in raw.replace("\r\n", "\r").replace("\n", "\r").split("\r")]
    segments = [ln for ln in lines if ln]
    if segments and segments[0].startswith("MSH") and len(segments[0]) > 3:
        fields = segments[0].split(segments[0][3])
        if len(fields) > 6:
            fields[6] = ""  # MSH-7: date/time of message
        segments[0] = segments[0][3].join(fields)
    return segments


def _first_line(exc: DataError) -> str:
    """The database's own words (``value too long for type character varying(324)``)."""
    return str(exc.orig or exc).strip().splitlines()[0][:200]
