"""Reading HL7 v2 ER7 messages into plain values the services understand.

Fields are taken as text and split on the message's own encoding characters (MSH-1, MSH-2), and
escapes read by escapes.py: python-hl7's parser built an object per element (slow on hostile
messages) and its unescape had no bound, so neither is used on received messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from solent.domain.birth import in_the_future
from solent.domain.nhs_number import NHS_ISSUER
from solent.domain.person_name import part_problem
from solent.protocols.hl7.escapes import unescape
from solent.services.identity import Demographics, PatientKey
from solent.services.inbox import Rejected as MessageRejected

__all__ = ["CX", "Header", "Message", "MessageRejected", "Segment"]


@dataclass(frozen=True, slots=True)
class Header:
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    control_id: str
    message_code: str  # ADT, ORM, OMI, ORU
    trigger: str  # A40, O01, ...
    structure: str
    version: str
    processing_id: str = "P"  # MSH-11: P production, T training, D debugging
    charset: str = ""  # MSH-18, as sent (HL7 table 0211)

    @property
    def sender(self) -> str:
        return f"{self.sending_application}^{self.sending_facility}"

    @property
    def message_type(self) -> str:
        return f"{self.message_code}^{self.trigger}"


@dataclass(frozen=True, slots=True)
class CX:
    id: str
    authority: str  # CX.4 namespace, or its universal ID when the namespace is empty
    type_code: str  # CX.5: MR, NH, PI, VN ...


class Segment:
    """One segment as text fields, split with the message's encoding characters."""

    def __init__(self, message: Message, fields: list[str]) -> None:
        self.message = message
        self.fields = fields
        self.name = fields[0] if fields else ""

    def field(self, n: int) -> str:
        """Field n (MSH-n numbering for MSH too) as raw text, '' when absent."""
        index = n - 1 if self.name == "MSH" else n
        return self.fields[index] if 0 <= index < len(self.fields) else ""

    def reps(self, n: int) -> list[str]:
        return [r for r in self.field(n).split(self.message.rep_sep) if r != ""]

    def comps(self, n: int, rep: int = 0) -> list[str]:
        reps = self.field(n).split(self.message.rep_sep)
        value = reps[rep] if rep < len(reps) else ""
        return value.split(self.message.comp_sep)

    def comp(self, n: int, c: int = 1, rep: int = 0) -> str:
        parts = self.comps(n, rep)
        return self.message.text(parts[c - 1]) if c - 1 < len(parts) else ""


class Message:
    """A message read as segments of text fields, split on its own delimiters."""

    def __init__(self, raw: str) -> None:
        text = raw.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
        if not text.startswith("MSH") or len(text) < 8:
            raise MessageRejected("AR", "not an HL7 v2 message: it must start with an MSH segment")
        if "\x00" in text:
            # No HL7 v2 data type allows it, and PostgreSQL stores no text holding it: the
            # journal would fail and the sender get no answer at all.
            raise MessageRejected("AR", "the message contains a NUL character (0x00)")
        self.field_sep = text[3]
        enc = text[4:8]
        _check_delimiters(self.field_sep + enc)
        self.comp_sep, self.rep_sep, self.escape, self.sub_sep = enc[0], enc[1], enc[2], enc[3]
        self.segments = [
            Segment(self, line.split(self.field_sep)) for line in text.split("\r") if line.strip()
        ]
        self.header = self._header()

    def _header(self) -> Header:
        header = _read_header(self.segments[0])
        if not header.control_id:
            raise MessageRejected("AR", "MSH-10 (message control ID) is empty")
        if len(header.control_id) > 64:
            raise MessageRejected("AR", "MSH-10 (message control ID) is longer than 64 characters")
        if not header.sending_facility:
            raise MessageRejected("AR", "MSH-4 (sending facility: the trust's ODS code) is empty")
        if not header.message_code or not header.trigger:
            raise MessageRejected("AR", "MSH-9 (message type) must carry a code and a trigger")
        if header.version and not header.version.startswith("2."):
            raise MessageRejected(
                "AR", f"unsupported version ID {header.version} in MSH-12: HL7 v2.x only"
            )
        return header

    def text(self, value: str) -> str:
        """Unescape HL7 escape sequences (\\F\\, \\S\\, \\T\\, \\R\\, \\E\\, \\Xhh\\, \\.br\\).

        A line break in a report (``\\X0D0A\\``) is a CR, which is HL7's segment separator and
        no line break in text/plain, the viewer or FHIR: it is written as LF."""
        if self.escape not in value:
            return value
        separators = self.field_sep + self.comp_sep + self.rep_sep + self.sub_sep
        out = unescape(value, separators, self.escape)
        return out.replace("\r\n", "\n").replace("\r", "\n")

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    def first(self, name: str) -> Segment | None:
        found = self.all(name)
        return found[0] if found else None

    def need(self, name: str) -> Segment:
        seg = self.first(name)
        if seg is None:
            raise MessageRejected("AE", f"{self.header.message_type} without a {name} segment")
        return seg

    def cx(self, value: str) -> CX:
        parts = (value.split(self.comp_sep) + [""] * 5)[:5]
        authority = parts[3]
        if self.sub_sep in authority:
            namespace, universal = ([*authority.split(self.sub_sep), "", ""])[:2]
            authority = namespace or universal
        return CX(self.text(parts[0]), self.text(authority), self.text(parts[4]))

    def identifiers(self, seg: Segment, n: int = 3) -> list[CX]:
        return [self.cx(r) for r in seg.reps(n)]


def _check_delimiters(chars: str) -> None:
    """MSH-1 and MSH-2: five different delimiters, none a letter, digit or space.

    python-hl7's ``parse`` was the check before; it builds an object for every element of the
    message (a message of 100,000 segments held a core for 18 s), and every field here is read
    by splitting the text on these delimiters anyway."""
    if len(set(chars)) != 5 or any(c.isalnum() or c.isspace() for c in chars):
        raise MessageRejected(
            "AR",
            f"MSH-1 and MSH-2 must be five different delimiters, as |^~\\& (found {chars!r})",
        )


def _read_header(msh: Segment) -> Header:
    code, trigger, structure = ([*msh.comps(9), "", "", ""])[:3]
    return Header(
        sending_application=msh.comp(3),
        sending_facility=msh.comp(4),
        receiving_application=msh.comp(5),
        receiving_facility=msh.comp(6),
        control_id=msh.field(10),
        message_code=code,
        trigger=trigger,
        structure=structure,
        version=msh.comp(12),
        processing_id=msh.comp(11) or "P",
        charset=msh.comp(18),
    )


def loose_header(raw: str) -> Header | None:
    """MSH as far as it can be read, for the ACK of a message refused as unreadable: its
    control ID goes back in MSA-2 whenever MSH-10 was sent, so the sender can match the
    refusal to its message instead of waiting for an answer that never names it."""
    text = raw.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    if not text.startswith("MSH") or len(text) < 8:
        return None
    fields = ["MSH", *text.split("\r", 1)[0][4:].split(text[3])]  # MSH-n is fields[n - 1]
    comp = text[4]

    def value(n: int, c: int = 1) -> str:
        parts = fields[n - 1].split(comp) if n - 1 < len(fields) else [""]
        return parts[c - 1] if c - 1 < len(parts) else ""

    control_id = value(10) if len(fields) >= 10 else ""
    if not control_id or len(control_id) > 64 or comp in control_id:
        return None
    return Header(
        sending_application=value(3),
        sending_facility=value(4),
        receiving_application=value(5),
        receiving_facility=value(6),
        control_id=control_id,
        message_code=value(9),
        trigger=value(9, 2),
        structure=value(9, 3),
        version=value(12),
        processing_id=value(11) or "P",
        charset=value(18),
    )


NHS_AUTHORITIES = ("NHS", "2.16.840.1.113883.2.1.4.1")


def is_nhs(cx: CX) -> bool:
    return cx.authority in NHS_AUTHORITIES or cx.type_code == "NH"


#: CX.5 identifier types of a patient's own record number (HL7 table 0203): medical record,
#: patient internal and patient external identifier, or none.
LOCAL_ID_TYPES = ("", "MR", "PI", "PT")


def local_key(
    msg: Message, seg: Segment, *, issuer: str | None, n: int = 3, default: str | None = None
) -> PatientKey:
    """The record PID-3 (or MRG-1) names for ``issuer`` (None: the one non-NHS identifier).

    An identifier without CX.4 from a trust's feed is that trust's (``issuer``, or ``default``
    for MRG-1): many PAS leave their own assigning authority out (``A123456^^^^MR``). One with
    another trust's CX.4 is never taken as the sender's."""
    ids = [cx for cx in msg.identifiers(seg, n) if not is_nhs(cx) and cx.id]
    owner = issuer or default
    if owner is not None:
        ids = [
            cx if cx.authority else CX(cx.id, owner, cx.type_code)
            for cx in ids
            if cx.authority or cx.type_code.upper() in LOCAL_ID_TYPES
        ]
    if issuer is not None:
        mine = [cx for cx in ids if cx.authority == issuer]
        if not mine:
            where = f"{seg.name}-{n}"
            found = ", ".join(f"{cx.id}^^^{cx.authority}" for cx in ids) or "none"
            raise MessageRejected(
                "AE",
                f"{where} carries no identifier assigned by the sending trust {issuer} "
                f"(found: {found}); a trust may only update its own records",
            )
        ids = mine
    if not ids:
        raise MessageRejected("AE", f"{seg.name}-{n} carries no local patient identifier")
    cx = ids[0]
    if not cx.authority:
        raise MessageRejected(
            "AE", f"{seg.name}-{n} identifier {cx.id} has no assigning authority (CX.4)"
        )
    if len(cx.id) > 64:
        raise MessageRejected("AE", f"{seg.name}-{n} identifier is longer than 64 characters")
    local_id = cx.id.strip(" ")  # DICOM LO: leading and trailing spaces are no part of it
    if not local_id:
        raise MessageRejected("AE", f"{seg.name}-{n} identifier is only spaces")
    if "\\" in local_id or any(ord(c) < 0x20 or ord(c) == 0x7F for c in local_id):
        raise MessageRejected(
            "AE",
            f"{seg.name}-{n} identifier {local_id} holds a backslash or a control character, "
            "which no DICOM Patient ID holds (a backslash would split it in two)",
        )
    return PatientKey(cx.authority, local_id)


def mother_key(msg: Message, pid: Segment, *, issuer: str) -> PatientKey | None:
    """PID-21 (Mother's Identifier, CX, repeating) as the record it names, or None when
    empty: a local identifier (without CX.4: the sending trust's), else her NHS number (issuer
    ``NHS``). R58: a relationship, never a link or a merge."""
    ids = [cx for cx in msg.identifiers(pid, 21) if cx.id]
    local = [cx for cx in ids if not is_nhs(cx)]
    if local:
        cx = local[0]
        if len(cx.id) > 64 or len(cx.authority) > 16:
            raise MessageRejected("AE", "PID-21 mother's identifier is too long")
        return PatientKey(cx.authority or issuer, cx.id)
    numbers = [cx for cx in ids if is_nhs(cx)]
    if numbers:
        number = numbers[0].id.replace(" ", "")
        if len(number) != 10 or not number.isdigit():
            raise MessageRejected("AE", f"PID-21 NHS number {numbers[0].id!r} is not ten digits")
        return PatientKey(NHS_ISSUER, number)
    return None


def person_name(msg: Message, seg: Segment, n: int) -> str | None:
    """XPN (family^given^middle^suffix^prefix) as a DICOM PN (family^given^middle)."""
    raw = seg.field(n)
    if raw == "":
        return None
    if raw == '""':
        return ""
    parts = [msg.text(p) for p in ([*seg.comps(n), "", "", ""])[:3]]
    for part in parts:
        problem = part_problem(part)
        if problem is not None:
            raise MessageRejected("AE", f"{seg.name}-{n} name part {part[:40]!r} {problem}")
    return "^".join(parts).rstrip("^")


def xcn_name(msg: Message, seg: Segment, n: int) -> str | None:
    """XCN (id^family^given^middle...) as a DICOM PN."""
    parts = seg.comps(n)
    if len(parts) < 2:
        return None
    name = "^".join(msg.text(p) for p in ([*parts[1:4], "", ""])[:3]).rstrip("^")
    return name[:324] or None


DELETE = '""'  # HL7 v2: a field sent as "" erases the receiver's value; empty means "not sent"


def dicom_sex(value: str) -> str | None:
    if not value:
        return None
    if value == DELETE:
        return ""
    return {"M": "M", "F": "F"}.get(value.upper(), "O")


#: XAD components that make up the address itself: street, other designation, city, state or
#: county, postcode, country. XAD.7 (address type: H home, M mailing...) and later components
#: say what kind of address it is, not where.
ADDRESS_COMPONENTS = 6


def address(msg: Message, seg: Segment, n: int) -> str | None:
    raw = seg.field(n)
    if raw == "":
        return None
    if raw == DELETE:
        return ""
    parts = [msg.text(p) for p in seg.comps(n)[:ADDRESS_COMPONENTS]]
    return ", ".join(p for p in parts if p and p != DELETE) or None


def telephone(msg: Message, seg: Segment, n: int) -> str | None:
    """XTN: the number as text (XTN.1), else the unformatted number (XTN.12, v2.5), else the
    country, area and local parts (XTN.5-7) that v2.5 senders fill instead of XTN.1."""
    raw = seg.field(n)
    if raw == "":
        return None
    if raw == DELETE:
        return ""
    parts = [msg.text(p) for p in ([*seg.comps(n), *[""] * 12])[:12]]
    if parts[0]:
        return parts[0]
    if parts[11]:
        return parts[11]
    number = " ".join(p for p in (parts[4] and f"+{parts[4].lstrip('+')}", *parts[5:7]) if p)
    return number or None


def nhs_status(msg: Message, pid: Segment) -> str | None:
    """PID-32 (Identity Reliability Code, repeating) as the ITK NHS number status NSTS01..08:
    the repetition that carries it, written ``NSTS01`` or as the bare status ``01``."""
    values = [msg.text(r.split(msg.comp_sep)[0]).strip().upper() for r in pid.reps(32)]
    for value in values:
        if value.startswith("NSTS"):
            return value
        if len(value) == 2 and value.isdigit() and "01" <= value <= "08":
            return f"NSTS{value}"
    return values[0] if values else None


def _calendar_date(value: str) -> bool:
    """YYYYMMDD naming a real day: 19701399 would be stored and matched on as a birth date."""
    if len(value) != 8 or not value.isdigit():
        return False
    try:
        date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return False
    return True


def demographics(msg: Message, pid: Segment) -> Demographics:
    nhs_ids = [cx for cx in msg.identifiers(pid) if is_nhs(cx) and cx.id]
    if pid.field(7) == DELETE:
        dob: str | None = ""
    else:
        dob = pid.comp(7)[:8] or None
        if dob is not None and not _calendar_date(dob):
            raise MessageRejected("AE", f"PID-7 date of birth {dob!r} is not YYYYMMDD")
        if dob and in_the_future(date(int(dob[:4]), int(dob[4:6]), int(dob[6:]))):
            raise MessageRejected("AE", f"PID-7 date of birth {dob} is in the future")
    pd1 = msg.first("PD1")
    gp_practice = gp = None
    if pd1 is not None:
        if pd1.field(3) == DELETE:
            gp_practice = ""
        else:
            gp_practice = "^".join(msg.text(p) for p in pd1.comps(3) if p) or None
        gp = "" if pd1.field(4) == DELETE else xcn_name(msg, pd1, 4)
    return Demographics(
        death_date=_death_date(msg, pid),
        visit_date=_visit_date(msg),
        name=person_name(msg, pid, 5),
        birth_date=dob,
        sex=dicom_sex(pid.field(8).split(msg.comp_sep)[0]),
        nhs_number=nhs_ids[0].id if nhs_ids else None,
        nhs_status=nhs_status(msg, pid),
        address=address(msg, pid, 11),
        phone=telephone(msg, pid, 13),
        gp_practice=gp_practice,
        gp=gp,
    )


def _death_date(msg: Message, pid: Segment) -> str | None:
    """PID-29 Patient Death Date and Time as YYYYMMDD (R42); ``""`` sent erases it."""
    if pid.field(29) == DELETE:
        return ""
    day = pid.comp(29)[:8]
    if not day:
        return None
    if not _calendar_date(day):  # 99999999 would be a death recorded for ever
        raise MessageRejected("AE", f"PID-29 date of death {day!r} is not YYYYMMDD")
    return day


#: ADT triggers that record a contact with the trust: admit, discharge, register (R42).
VISIT_TRIGGERS = ("A01", "A03", "A04")


def _visit_date(msg: Message) -> str | None:
    """The date of the visit an A01/A03/A04 reports: PV1-45 discharge, else PV1-44 admit,
    else EVN-2 (recorded); None for any other message."""
    if msg.header.trigger not in VISIT_TRIGGERS:
        return None
    pv1, evn = msg.first("PV1"), msg.first("EVN")
    for value in (
        pv1.comp(45) if pv1 else "",
        pv1.comp(44) if pv1 else "",
        evn.comp(2) if evn else "",
    ):
        day, _ = timestamp(value) if value else (None, None)
        if day is not None:
            return day
    return None


def timestamp(value: str) -> tuple[str | None, str | None]:
    """HL7 DTM -> (DICOM DA, DICOM TM); (None, None) when it names no real day (99999999
    went out in the worklist as a scheduled date no modality reads), the time None when it
    is no time of day."""
    digits = value.split("+")[0].split("-")[0]
    if len(digits) < 8 or not _calendar_date(digits[:8]):
        return None, None
    return digits[:8], (digits[8:14] if _time_of_day(digits[8:14]) else None)


def _time_of_day(value: str) -> bool:
    """HHMMSS, HHMM or HH (DICOM TM without fraction) within a day."""
    if len(value) not in (2, 4, 6) or not value.isascii() or not value.isdigit():
        return False
    hh, mm, ss = int(value[:2]), int(value[2:4] or 0), int(value[4:6] or 0)
    return hh < 24 and mm < 60 and ss < 60


def first_nonempty(*values: str) -> str:
    for v in values:
        if v:
            return v
    return ""


def as_dict(header: Header) -> dict[str, Any]:
    return {
        "sender": header.sender,
        "control_id": header.control_id,
        "message_type": header.message_type,
    }
