"""From one HL7 v2 message to calls on the identity service and the inbox, and back to an ACK.

Error table: unreadable message, unknown sender or unsupported type -> AR; a message the
services refuse (unknown patient, merge across trusts, bad field) -> AE; applied -> AA, sent
only after the change and the journal entry are committed together.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from solent.domain import nhs_number as nhs
from solent.domain.principal import REGIONAL_IDENTITY_SOURCE, Principal, PrincipalKind
from solent.errors import IndexUnavailable
from solent.protocols.hl7 import charsets, er7, queries
from solent.protocols.hl7.ack import ack_bytes, build_ack
from solent.protocols.hl7.ack import escape as ack_escape
from solent.protocols.hl7.er7 import Header, Message, MessageRejected
from solent.protocols.hl7.senders import SenderGate
from solent.services.identity import Change
from solent.services.inbox import Apply, Envelope, Hl7Transaction, Outcome, Rejected
from solent.services.registry import Services

log = logging.getLogger(__name__)

ADT_UPDATES = ("A01", "A03", "A04", "A08", "A28", "A31")  # A03: discharge, death (R42)
#: Every message type this handler applies, (MSH-9.1, MSH-9.2) -> what it does; anything else
#: is refused with AR. The HL7 access matrix (tests/unit/test_hl7_access_matrix.py) is generated
#: from this table: a type added here without a place in the matrix fails that test.
MESSAGE_TYPES: dict[tuple[str, str], str] = {
    **{("ADT", trigger): "update" for trigger in ADT_UPDATES},
    ("ADT", "A24"): "link",
    ("ADT", "A37"): "unlink",
    ("ADT", "A40"): "merge",
    ("ADT", "A47"): "renumber",
    ("ORM", "O01"): "order",
    ("OMI", "O23"): "order",
    ("ORU", "R01"): "report",
}
ORDER_STATUS = {"SC": "SCHEDULED", "IP": "STARTED", "CM": "COMPLETED", "CA": "DISCONTINUED"}
REPORT_STATUSES = ("P", "F", "C", "A", "R", "S", "I", "X")


def _batch_header(name: str, received: str) -> str:
    """FHS/BHS of the answer to a batch: sender and receiver swapped, its own control ID in
    -11 and the received batch's in -12 (the reference HL7 asks for)."""
    sep, comp = (received[3], received[4]) if len(received) > 8 else ("|", "^")
    fields = received.split(sep) if len(received) > 8 else [name]
    fields += [""] * (12 - len(fields))

    def value(n: int) -> str:  # FHS-n / BHS-n, first component, as text of the answer
        return ack_escape(fields[n - 1].split(comp)[0])

    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    out = [name, "^~\\&", value(5) or "SOLENT", value(6) or "PACS", value(3), value(4), stamp]
    out += ["", "", "", f"SOLENT{uuid.uuid4().hex[:20]}", value(11)]
    return "|".join(out)


@dataclass(frozen=True, slots=True)
class Speaker:
    """The trust a feed speaks for (its registration), or a regional identity source (an
    EMPI: registered without a trust, or named in SOLENT_HL7_LINK_SENDERS). The identity
    service decides what each may change (issue 11); this only names the caller."""

    trust: str | None
    regional: bool

    def issuer(self, h: Header) -> str:
        """The trust whose identifiers the message carries: the one the feed is registered
        for, which may differ from MSH-4 when the registration says so (ITK: MSH-4 may be a
        5-character site code of the trust, registered with ``--trust``); else MSH-4."""
        return self.trust if self.trust and not self.regional else h.sending_facility

    def principal(self, h: Header, remote: str | None) -> Principal:
        """The feed as the services see it: its registered trust and, for a regional identity
        source, the role that lets it link and change records of every trust."""
        return Principal(
            PrincipalKind.NODE,
            f"hl7:{h.sending_application}",
            self.trust or h.sending_facility,
            roles=frozenset({REGIONAL_IDENTITY_SOURCE}) if self.regional else frozenset(),
            address=remote,
        )

    def reader(self, h: Header, remote: str | None) -> Principal:
        """The sender as the caller of a query (PIX, PDQ): it reads as the trust it is
        registered for, and a registration without a trust (the EMPI) as no trust, whatever
        MSH-4 says; the regional role widens what a feed may change, never what it may read."""
        return Principal(
            PrincipalKind.NODE, f"hl7:{h.sending_application}", self.trust, address=remote
        )


class Hl7Handler:
    """Stateless: any number of listeners in any number of processes may share an index."""

    def __init__(
        self,
        services: Services,
        *,
        link_senders: tuple[str, ...] = (),
        gate: SenderGate | None = None,
    ) -> None:
        self.directory = services.directory
        self.patients = services.patients  # R5/R6: PIX and PDQ queries
        #: Security (issue 6): registered senders only (the listener passes one; None: no check).
        self.gate = gate
        self.inbox = services.inbox
        self.link_senders = link_senders
        self._known_trusts: set[str] = set()

    def handle_bytes(self, data: bytes, remote: str | None = None) -> bytes:
        raw = charsets.decode(data)
        if raw.lstrip("\r\n").startswith(("FHS", "BHS")):
            return self.handle_batch(raw, remote)
        return ack_bytes(self.handle(raw, remote), er7.loose_header(raw))

    def refuse_unread(self, head: bytes, reason: str) -> bytes:
        """The AR of a message refused before it could be read whole (larger than MLLP takes):
        named by the MSH in its first bytes; not journalled, as it was never received whole."""
        header = er7.loose_header(charsets.decode(head))
        return ack_bytes(build_ack(header, "AR", reason), header)

    def handle_batch(self, raw: str, remote: str | None = None) -> bytes:
        """An HL7 batch (FHS/BHS ... BTS/FTS) in one frame, as PAS replays and catch-up feeds
        send it: each message is handled as if sent alone, in order (journalled, applied, its
        own ACK), and the answer is a batch of those ACKs whose BHS-12 names the batch."""
        lines = [ln for ln in raw.replace("\r\n", "\r").replace("\n", "\r").split("\r") if ln]
        headers = {ln[:3]: ln for ln in lines if ln[:3] in ("FHS", "BHS")}
        messages: list[list[str]] = []
        for line in lines:
            if line.startswith("MSH"):
                messages.append([line])
            elif line[:3] in ("FHS", "BHS", "BTS", "FTS"):
                continue
            elif messages:
                messages[-1].append(line)
        acks = [self.handle("\r".join(m) + "\r", remote) for m in messages]
        first = er7.loose_header("\r".join(messages[0])) if messages else None
        body = [a.strip("\r") for a in acks]
        if "BHS" in headers or not headers:
            body = [_batch_header("BHS", headers.get("BHS", "")), *body, f"BTS|{len(acks)}"]
        if "FHS" in headers:
            body = [_batch_header("FHS", headers["FHS"]), *body, "FTS|1"]
        return ack_bytes("\r".join(body) + "\r", first)

    def handle(self, raw: str, remote: str | None = None) -> str:
        try:
            msg = Message(raw)
        except MessageRejected as exc:
            env = Envelope(None, None, None, raw.replace("\x00", "\ufffd"), remote)
            self._keep_rejected(env, exc.code, exc.reason)
            return build_ack(er7.loose_header(raw), exc.code, exc.reason)
        h = msg.header
        speaker = Speaker(h.sending_facility, h.sending_facility in self.link_senders)
        if self.gate is not None:
            try:
                row = self.gate.check(h, remote)
            except MessageRejected as exc:  # unknown sender: answered, audited, not journalled
                return build_ack(msg, exc.code, exc.reason)
            if row is not None:
                speaker = Speaker(row.trust_code, row.trust_code is None or speaker.regional)
        if queries.is_query(msg):  # a read: answered as the sender, audited, not journalled
            return queries.answer(msg, speaker.reader(h, remote), self.patients)
        env = Envelope(h.sender, h.control_id, h.message_type, raw, remote, speaker.issuer(h))
        try:
            apply = self._route(msg, speaker)
        except MessageRejected as exc:
            outcome = self._reject_journalled(env, exc.code, exc.reason)
            return build_ack(msg, outcome.code, outcome.detail)
        principal = speaker.principal(h, remote)
        try:
            outcome = self.inbox.process(env, lambda pk: Change(principal, pk), apply)
        except IndexUnavailable as exc:
            log.error("HL7 %s %s not applied: %s", h.message_type, h.control_id, exc)
            outcome = Outcome("AR", "temporarily unable to store the message; resend it later")
        log.info(
            "HL7 %s %s from %s: %s %s",
            h.message_type,
            h.control_id,
            h.sender,
            outcome.code,
            outcome.detail,
        )
        return build_ack(msg, outcome.code, outcome.detail)

    def reapply(self, pk: int, raw: str, remote: str | None) -> Outcome:
        """Apply a message journalled by a process that died before applying it."""
        msg = Message(raw)
        h = msg.header
        speaker = Speaker(h.sending_facility, h.sending_facility in self.link_senders)
        row = self.gate.registration(h) if self.gate is not None else None
        if row is not None:  # the gate passed it when it was journalled
            speaker = Speaker(row.trust_code, row.trust_code is None or speaker.regional)
        env = Envelope(h.sender, h.control_id, h.message_type, raw, remote, speaker.issuer(h))
        try:
            apply = self._route(msg, speaker)
        except MessageRejected as exc:
            return self._reject_journalled(env, exc.code, exc.reason)
        change = Change(speaker.principal(h, remote), pk)
        return self.inbox.apply_journalled(pk, env, change, apply)

    def recover(self) -> int:
        """Apply every journalled-but-unapplied message, oldest first; returns how many."""
        done = 0
        for row in self.inbox.pending(_nobody()):
            try:
                self.reapply(int(row["pk"]), row["raw"], row["remote_address"])
                done += 1
            except Exception:
                log.exception("could not re-apply journalled HL7 message %s", row["pk"])
        return done

    def _keep_rejected(self, env: Envelope, code: str, reason: str) -> None:
        try:
            self.inbox.reject_unjournalled(env, code, reason)
        except Exception:
            log.exception("could not journal a rejected HL7 message")

    def _reject_journalled(self, env: Envelope, code: str, reason: str) -> Outcome:
        """Refuse a readable message; a replay of a refused message gets the same answer."""
        pk, earlier = self.inbox.journal(env)
        if earlier is not None and earlier["status"] != "received":
            return Outcome(earlier["ack_code"] or code, earlier["detail"] or reason, True)

        def fail(tx: Hl7Transaction) -> str:
            raise Rejected(code, reason)

        return self.inbox.apply_journalled(pk, env, Change(_nobody()), fail)

    # -- routing ---------------------------------------------------------------------------

    def _route(self, msg: Message, speaker: Speaker) -> Apply:
        h = msg.header
        code, trigger = h.message_code.upper(), h.trigger.upper()
        kind = MESSAGE_TYPES.get((code, trigger))
        if kind is None:
            if any(known == code for known, _ in MESSAGE_TYPES):
                raise MessageRejected("AR", f"unsupported event {h.message_type}")
            raise MessageRejected("AR", f"unsupported message type {h.message_type}")
        if kind in ("link", "unlink"):
            if not speaker.regional:  # a regional source may be no trust (the EMPI)
                self._check_trust(h.sending_facility)
            return lambda tx: self._link(msg, trigger, tx)
        # A feed speaks for the trust it is registered for (the registration of MSH-3/MSH-4
        # names it); its identifiers, orders and accessions are that trust's.
        issuer = speaker.issuer(h)
        self._check_trust(issuer)
        apply = {
            "update": self._update,
            "merge": self._merge,
            "renumber": self._renumber,
            "order": self._order,
            "report": self._report,
        }[kind]
        return lambda tx: apply(msg, tx, issuer)

    def _check_trust(self, facility: str) -> None:
        # Trusts are added, never removed, so a trust once seen needs no second look-up.
        if facility in self._known_trusts:
            return
        if self.directory.trust(facility) is None:
            raise MessageRejected(
                "AR",
                f"MSH-4 sending facility {facility} is not a registered trust (a site of a "
                "trust is registered with `solent hl7 sender add APP SITE --trust TRUST`)",
            )
        self._known_trusts.add(facility)

    # -- ADT -------------------------------------------------------------------------------

    def _update(self, msg: Message, tx: Hl7Transaction, facility: str) -> str:
        pid = msg.need("PID")
        key = er7.local_key(msg, pid, issuer=facility)
        mother = er7.mother_key(msg, pid, issuer=facility)
        tx.update_record(key, er7.demographics(msg, pid), mother)
        if msg.header.trigger.upper() == "A01":
            tx.admitted(key)  # a prior prefetch trigger (R47)
        if mother is None:
            return f"record {key} updated"
        return f"record {key} updated; mother {mother} recorded (a relationship, not a link)"

    def _merge(self, msg: Message, tx: Hl7Transaction, facility: str) -> str:
        """Within one trust only: the identity service refuses (and queues) a cross-trust
        merge, which is never what a feed may ask for."""
        pid, mrg = msg.need("PID"), msg.need("MRG")
        target = er7.local_key(msg, pid, issuer=facility)
        source = er7.local_key(msg, mrg, issuer=None, n=1, default=facility)
        tx.merge(target, source, er7.demographics(msg, pid), er7.person_name(msg, mrg, 7))
        return f"{source} merged into {target}; {source.local_id} kept as a retired identifier"

    def _renumber(self, msg: Message, tx: Hl7Transaction, facility: str) -> str:
        pid, mrg = msg.need("PID"), msg.need("MRG")
        new = er7.local_key(msg, pid, issuer=facility)
        old = er7.local_key(msg, mrg, issuer=None, n=1, default=facility)
        tx.change_identifier(new, old)
        return f"identifier {old} changed to {new}"

    def _link(self, msg: Message, trigger: str, tx: Hl7Transaction) -> str:
        """Which records the feed may link is the identity service's decision (its principal
        carries the feed's trust or the regional role); a refusal comes back as AE."""
        pids = msg.all("PID")
        if len(pids) != 2:
            raise Rejected("AE", f"ADT^{trigger} needs exactly two PID segments")
        a = er7.local_key(msg, pids[0], issuer=None)
        b = er7.local_key(msg, pids[1], issuer=None)
        if trigger == "A24":
            tx.link(a, b, source="hl7:A24")
            return f"{a} linked with {b}"
        tx.unlink(a, b, source="hl7:A37")
        return f"{a} unlinked from {b}"

    # -- orders ----------------------------------------------------------------------------

    def _order(self, msg: Message, tx: Hl7Transaction, facility: str) -> str:
        pid, orc = msg.need("PID"), msg.need("ORC")
        obr = msg.need("OBR")
        ipc = msg.first("IPC")
        zds = msg.first("ZDS")
        tq1 = msg.first("TQ1")
        key = er7.local_key(msg, pid, issuer=facility)
        accession = er7.first_nonempty(
            ipc.comp(1) if ipc else "", obr.comp(18), obr.comp(3), orc.comp(3)
        )
        if not accession:
            raise Rejected("AE", "order without an accession number (OBR-18, IPC-1 or OBR-3)")
        _max(accession, 16, "accession number")
        control = orc.comp(1).upper()
        context = {
            "accession_number": accession,
            "accession_issuer": facility,
            # Bounded as order_context keeps them: wider was cut on SQLite and failed the
            # write on PostgreSQL.
            "placer_order": _max(orc.comp(2) or obr.comp(2), 64, "placer order number") or None,
            "filler_order": _max(orc.comp(3) or obr.comp(3), 64, "filler order number") or None,
            "order_control": _max(control, 4, "order control ORC-1") or None,
            "order_status": _max(orc.comp(5), 4, "order status ORC-5") or None,
            "procedure_code": _max(obr.comp(4, 1), 64, "procedure code OBR-4.1") or None,
            "procedure_coding_system": _max(obr.comp(4, 3), 32, "coding system OBR-4.3") or None,
            "clinical_details": msg.text(obr.field(13)) or None,
            "message_pk": tx.change.message_pk,
        }
        if control in ("CA", "DC", "OC", "OD"):
            return tx.order_status(accession, facility, "DISCONTINUED", context, key)
        if control == "SC" and orc.comp(5) in ORDER_STATUS:
            status = ORDER_STATUS[orc.comp(5)]
            return tx.order_status(accession, facility, status, context, key)
        if control not in ("NW", "XO", ""):
            raise Rejected("AE", f"unsupported order control ORC-1 {control}")
        demo = er7.demographics(msg, pid)
        _max(demo.name or "", 324, "patient name PID-5")  # the order keeps it as sent
        if tx.resolve(key.issuer, key.local_id) is None:
            tx.update_record(key, demo)
        start = er7.first_nonempty(
            tq1.comp(7) if tq1 else "", orc.comp(7, 4), obr.comp(27, 4), obr.comp(7)
        )
        date, time = er7.timestamp(start)
        if date is None:
            raise Rejected("AE", "order without a scheduled start (TQ1-7, ORC-7.4 or OBR-7)")
        modality = er7.first_nonempty(ipc.comp(5) if ipc else "", obr.comp(24))
        if not modality:
            raise Rejected("AE", "order without a modality (OBR-24 or IPC-5)")
        study_uid = (
            er7.first_nonempty(ipc.comp(3) if ipc else "", zds.comp(1) if zds else "")
            or f"2.25.{uuid.uuid4().int}"
        )
        number = nhs.normalise(demo.nhs_number or "")
        order = {
            "accession_number": accession,
            "accession_issuer": facility,
            "patient_issuer": key.issuer,
            "patient_id": key.local_id,
            "patient_name": demo.name,
            "patient_birth_date": demo.birth_date,
            "patient_sex": demo.sex,
            "nhs_number": number if nhs.is_valid(number) else None,
            "study_instance_uid": _max(study_uid, 64, "Study Instance UID"),
            "requested_procedure_id": _max(
                er7.first_nonempty(ipc.comp(2) if ipc else "", obr.comp(19)), 16, "procedure ID"
            )
            or None,
            "requested_procedure_description": (obr.comp(4, 2) or None) and obr.comp(4, 2)[:64],
            "referring_physician": er7.xcn_name(msg, orc, 12) or er7.xcn_name(msg, obr, 16),
            "modality": _max(modality, 16, "modality"),
            "scheduled_start_date": date,
            "scheduled_start_time": time,
            "scheduled_procedure_step_id": _max(
                er7.first_nonempty(ipc.comp(4) if ipc else "", obr.comp(20)), 16, "SPS ID"
            )
            or None,
            "scheduled_procedure_step_description": (obr.comp(4, 2) or None)
            and obr.comp(4, 2)[:64],
            "scheduled_station_ae_title": (ipc.comp(9) if ipc else "")[:16] or None,
        }
        return tx.place_order(order, context)

    # -- reports ---------------------------------------------------------------------------

    def _report(self, msg: Message, tx: Hl7Transaction, facility: str) -> str:
        pid, obr = msg.need("PID"), msg.need("OBR")
        key = er7.local_key(msg, pid, issuer=facility)
        accession = er7.first_nonempty(obr.comp(18), obr.comp(3))
        if not accession:
            raise Rejected("AE", "report without an accession number (OBR-18 or OBR-3)")
        _max(accession, 16, "accession number")
        status = obr.comp(25).upper() or "F"
        if status not in REPORT_STATUSES:
            raise Rejected("AE", f"OBR-25 result status {status!r} is not a known status")
        lines: list[str] = []
        for obx in msg.all("OBX"):
            kind = obx.comp(2).upper()
            if kind in ("TX", "FT", "ST"):
                lines.extend(msg.text(r) for r in obx.field(5).split(msg.rep_sep))
            elif kind == "ED":
                lines.append("[encapsulated document: see the RIS]")
        for nte in msg.all("NTE"):
            lines.append(msg.text(nte.field(3)))
        if not lines:
            raise Rejected("AE", "report without text (OBX TX/FT/ST or ED)")
        interpreter = obr.comps(32)[0].split(msg.sub_sep) if obr.field(32) else []
        report = {
            "accession_number": accession,
            "accession_issuer": facility,
            "status": status,
            "patient_issuer": key.issuer,
            "patient_id": key.local_id,
            "procedure": (obr.comp(4, 2) or obr.comp(4, 1))[:200] or None,
            "text": "\n".join(lines),
            "interpreter": "^".join(interpreter[1:4]).rstrip("^")[:200] or None,
            # The RIS user code: an MDT discrepancy is addressed to this reporter (R32).
            "interpreter_id": (interpreter[0].strip()[:64] or None) if interpreter else None,
            "observed_at": (obr.comp(22) or obr.comp(7))[:26] or None,
            "message_pk": tx.change.message_pk,
        }
        return tx.file_report(report, key)


def _max(value: str, length: int, what: str) -> str:
    if len(value) > length:
        raise Rejected("AE", f"{what} {value!r} is longer than {length} characters")
    return value


def _nobody() -> Principal:
    return Principal(PrincipalKind.SYSTEM, "hl7-inbox", None)
