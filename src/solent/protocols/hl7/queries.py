"""HL7 v2 queries over MLLP (R5, R6): IHE PIX Query (ITI-9, QBP^Q23 -> RSP^K23) and IHE PDQ
(ITI-21, QBP^Q22 -> RSP^K22), answered through the patient query service as the sender.

Queries change nothing, so they are not journalled; each is audited by the service. Answers
follow IHE ITI TF-2 3.9.4.2 and 3.21.4.2 (v2.5 layout):

* found: MSA AA, QAK-2 OK, one PID per person (PIX: PID-3 the other identifiers, PID-5 the
  "no name" pseudo-name ``~^^^^^^S``);
* nothing to return: MSA AA, QAK-2 NF, no PID;
* QPD-3 identifier unknown (or not the sender's to see: answered alike): MSA AE, QAK-2 AE, ERR
  ``QPD^1^3^1^1`` 204; its domain unknown: ``QPD^1^3^1^4`` 204;
* a domain of "what domains returned" (PIX QPD-4, PDQ QPD-8) unknown: AE, one ERR
  ``QPD^1^4^n`` / ``QPD^1^8^n`` 204 per unknown repetition;
* a malformed query (no QPD, an unsupported PDQ field): AE with ERR naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from solent.domain.principal import Principal
from solent.errors import IndexUnavailable, InvalidInput
from solent.protocols.hl7.ack import escape, reply_header
from solent.protocols.hl7.er7 import NHS_AUTHORITIES, Message, Segment
from solent.services.access import AccessDenied, NotVisible
from solent.services.patient_queries import (
    NHS_DOMAIN,
    DemographicQuery,
    DomainId,
    PatientQueryService,
    PersonFound,
    UnknownDomains,
    UnknownSourceDomain,
)

log = logging.getLogger(__name__)

#: (MSH-9.1, MSH-9.2) of the queries answered here -> (transaction, answer's MSH-9).
QUERY_TYPES: dict[tuple[str, str], tuple[str, str]] = {
    ("QBP", "Q23"): ("ITI-9", "RSP^K23^RSP_K23"),
    ("QBP", "Q22"): ("ITI-21", "RSP^K22^RSP_K22"),
}
UNKNOWN_KEY = "204^Unknown key identifier^HL70357"
DATA_TYPE = "102^Data type error^HL70357"
HL7_SEXES = ("F", "M", "O", "U", "A", "N")  # HL7 table 0001
NHS_HD = "NHS&2.16.840.1.113883.2.1.4.1&ISO"
#: PDQ QPD-3 fields (HL7 "@" field references) -> the criterion they set.
PDQ_FIELDS = {
    "PID.5.1": "family",
    "PID.5.1.1": "family",
    "PID.5.2": "given",
    "PID.7": "birth_date",
    "PID.7.1": "birth_date",
    "PID.8": "sex",
    "PID.3.1": "id",
    "PID.3": "id",
    "PID.3.4": "authority",
    "PID.3.4.1": "authority",
    "PID.3.4.2": "authority",
}


class QueryError(Exception):
    """A query answered AE: ERR segments (location, code) and the text for MSA-3."""

    def __init__(self, text: str, errors: list[tuple[str, str]]) -> None:
        super().__init__(text)
        self.text = text
        self.errors = errors


def is_query(msg: Message) -> bool:
    h = msg.header
    return (h.message_code.upper(), h.trigger.upper()) in QUERY_TYPES


def answer(msg: Message, principal: Principal, patients: PatientQueryService) -> str:
    """The RSP to a QBP message (``is_query``), built whatever the outcome."""
    h = msg.header
    transaction, rsp_type = QUERY_TYPES[(h.message_code.upper(), h.trigger.upper())]
    qpd = msg.first("QPD")
    tag = qpd.field(2) if qpd else ""
    run: Callable[[Segment], list[str]] = (
        (lambda q: _pix(msg, q, principal, patients))
        if transaction == "ITI-9"
        else (lambda q: _pdq(msg, q, principal, patients))
    )
    code, status, text, body, errors = "AA", "OK", "", [], []
    try:
        if qpd is None:
            raise QueryError(
                "query without a QPD segment", [("QPD^1", "100^Segment sequence error^HL70357")]
            )
        body = run(qpd)
        status = "OK" if body else "NF"
    except QueryError as exc:
        code, status, text, errors = "AE", "AE", exc.text, exc.errors
    except IndexUnavailable as exc:
        log.error("HL7 %s %s not answered: %s", h.message_type, h.control_id, exc)
        code, status, text = "AR", "AR", "temporarily unable to answer; query again later"
        errors = [("", "207^Application internal error^HL70357")]
    except AccessDenied as exc:
        code, status, text = "AR", "AR", exc.message
        errors = [("", "207^Application internal error^HL70357")]
    except Exception:  # a fault of ours: answered AR, never a connection closed unanswered
        log.exception("HL7 %s %s not answered", h.message_type, h.control_id)
        code, status, text = "AR", "AR", "internal error answering the query; query again later"
        errors = [("", "207^Application internal error^HL70357")]
    log.info("HL7 %s %s from %s: %s %s", h.message_type, h.control_id, h.sender, code, status)
    segments = [
        reply_header(h, rsp_type),
        f"MSA|{code}|{escape(h.control_id)}|{escape(text)[:500]}",
    ]
    segments += [f"ERR||{where}|{what}|E||||{escape(text)[:500]}" for where, what in errors]
    hits = sum(1 for s in body if s.startswith("PID|"))
    qak = f"QAK|{tag}|{status}|{qpd.field(1) if qpd else ''}"
    if transaction == "ITI-21" and status != "AE":
        qak += f"|{hits}|{hits}|0"
    segments.append(qak)
    if qpd is not None:  # echoed as sent (IHE: QPD of the query), in the answer's delimiters
        segments.append("|".join(_standard(msg, f) for f in qpd.fields))
    segments += body
    return "\r".join(segments) + "\r"


# -- PIX (ITI-9) -------------------------------------------------------------------------------


def _pix(
    msg: Message, qpd: Segment, principal: Principal, patients: PatientQueryService
) -> list[str]:
    source = msg.cx(qpd.field(3).split(msg.rep_sep)[0])
    if not source.id:
        raise QueryError("QPD-3 carries no patient identifier", [("QPD^1^3^1^1", UNKNOWN_KEY)])
    domain = _domain(source.authority, source.type_code)
    domains = [_domain(msg.cx(r).authority) for r in qpd.field(4).split(msg.rep_sep) if r]
    try:
        found = patients.cross_reference(
            principal, DomainId(domain, source.id), domains, transaction="ITI-9"
        )
    except UnknownSourceDomain:
        raise QueryError(
            f"QPD-3 assigning authority {domain or '(empty)'} is not a known domain",
            [("QPD^1^3^1^4", UNKNOWN_KEY)],
        ) from None
    except UnknownDomains as exc:
        raise QueryError(
            str(exc), [(f"QPD^1^4^{n}", UNKNOWN_KEY) for n, _ in exc.domains]
        ) from None
    except NotVisible:
        raise QueryError(
            f"QPD-3 identifier {source.id} is not known in domain {domain}",
            [("QPD^1^3^1^1", UNKNOWN_KEY)],
        ) from None
    if not found:
        return []
    return [f"PID|||{_cx_list(found)}||~^^^^^^S"]


# -- PDQ (ITI-21) ------------------------------------------------------------------------------


def _pdq(
    msg: Message, qpd: Segment, principal: Principal, patients: PatientQueryService
) -> list[str]:
    wanted: dict[str, str] = {}
    for n, rep in enumerate(qpd.field(3).split(msg.rep_sep), 1):
        if not rep:
            continue
        name, _, value = rep.partition(msg.comp_sep)
        key = PDQ_FIELDS.get(name.lstrip("@").upper())
        if key is None:
            raise QueryError(
                f"QPD-3 field {name} is not supported; supported: "
                + ", ".join(sorted({f"@{f}" for f in PDQ_FIELDS})),
                [(f"QPD^1^3^{n}^1", "103^Table value not found^HL70357")],
            )
        if key in wanted and key != "authority":  # PID.3.4.1 and .2 together name one domain
            raise QueryError(  # the last one silently won: a query for something not asked
                f"QPD-3 field {name} is given more than once", [(f"QPD^1^3^{n}^1", DATA_TYPE)]
            )
        wanted[key] = msg.text(value)
    identifier = None
    if wanted.get("id"):
        identifier = DomainId(_domain(wanted.get("authority", "")), wanted["id"])
    sex = (wanted.get("sex") or "").upper() or None
    if sex is not None and sex not in HL7_SEXES:
        raise QueryError(
            f"QPD-3 @PID.8 {sex[:20]!r} is not a sex of HL7 table 0001 (F, M, O, U, A, N)",
            [("QPD^1^3", DATA_TYPE)],
        )
    query = DemographicQuery(
        family=(wanted.get("family") or "").rstrip("*") or None,
        given=(wanted.get("given") or "").rstrip("*") or None,
        birth_date=(wanted.get("birth_date") or "")[:8] or None,
        sex=sex if sex in (None, "M", "F", "O", "U") else "O",
        identifier=identifier,
        exact_names=not any(wanted.get(k, "").endswith("*") for k in ("family", "given")),
    )
    domains = [_domain(msg.cx(r).authority) for r in qpd.field(8).split(msg.rep_sep) if r]
    limit = _limit(msg)
    try:
        people = patients.find_people(principal, query, domains, transaction="ITI-21", limit=limit)
    except UnknownSourceDomain:
        raise QueryError(
            "QPD-3 @PID.3.4 is not a known domain", [("QPD^1^3^1^4", UNKNOWN_KEY)]
        ) from None
    except UnknownDomains as exc:
        raise QueryError(
            str(exc), [(f"QPD^1^8^{n}", UNKNOWN_KEY) for n, _ in exc.domains]
        ) from None
    except InvalidInput as exc:
        what = "101^Required field missing^HL70357" if query.is_empty() else DATA_TYPE
        raise QueryError(str(exc), [("QPD^1^3", what)]) from None
    return [_pid(n, p) for n, p in enumerate(people, 1)]


#: A standard delimiter that is data in a field of a message with other delimiters, escaped.
_LITERAL = {"|": "\\F\\", "^": "\\S\\", "~": "\\R\\", "&": "\\T\\", "\\": "\\E\\"}


def _standard(msg: Message, field: str) -> str:
    """A field of ``msg`` written with the standard delimiters ``^~\\&`` the answer's MSH-2
    declares: a sender's own (``MSH#!~\\&``) would otherwise be read as data there."""
    own = {msg.comp_sep: "^", msg.rep_sep: "~", msg.sub_sep: "&", msg.escape: "\\"}
    if all(k == v for k, v in own.items()):
        return field
    return "".join(own.get(c) or _LITERAL.get(c, c) for c in field)


def _limit(msg: Message) -> int:
    rcp = msg.first("RCP")
    raw = rcp.comp(2) if rcp else ""
    return min(int(raw), 100) if raw.isdigit() and int(raw) > 0 else 100


def _pid(n: int, person: PersonFound) -> str:
    row = person.shown
    name = "^".join((row["name"] or "").split("=")[0].split("^")[:3]).rstrip("^")
    return "|".join(
        [
            "PID",
            str(n),
            "",
            _cx_list(person.identifiers),
            "",
            escape_pn(name),
            "",
            row["birth_date"] or "",
            row["sex"] or "",
        ]
    )


def escape_pn(name: str) -> str:
    """A DICOM PN (family^given^middle) as an XPN: components kept, each escaped."""
    return "^".join(escape(part) for part in name.split("^"))


# -- identifiers -------------------------------------------------------------------------------


def _domain(authority: str, type_code: str = "") -> str:
    """CX.4 (namespace, or universal ID) -> a domain name: the NHS OID and type NH are NHS."""
    if authority in NHS_AUTHORITIES or (not authority and type_code.upper() == "NH"):
        return NHS_DOMAIN
    return authority


def _cx_list(ids: list[DomainId]) -> str:
    """PID-3: NHS numbers as ``n^^^NHS&2.16.840.1.113883.2.1.4.1&ISO^NH``, local IDs as
    ``id^^^ODS^MR``."""
    return "~".join(
        f"{escape(i.value)}^^^{NHS_HD}^NH"
        if i.domain == NHS_DOMAIN
        else f"{escape(i.value)}^^^{escape(i.domain)}^MR"
        for i in ids
    )
