"""Outbound HL7 v2.5 notifications of study edits to a trust's RIS (R57), over MLLP.

Message choice (what a RIS integration engineer expects of an Image Manager; IHE RAD-4/-13
carry the same segments the other way): OMI^O23 (imaging order), one ORDER group per order
named, each ORC, OBR, NTE, IPC:

* a study (or series) moved to another patient record: ORC-1 ``XO`` (order changed) under a
  PID of the record the study belongs to now (PID-3: the issuer's local ID, type MR, and the
  NHS number, type NH), with the accession in ORC-3 / OBR-3 (filler order number, namespace
  the issuer) and OBR-18, and the Study Instance UID in IPC-3;
* an accession corrected: HL7's order replacement, ORC-1 ``RU`` (replaced unsolicited) with
  the old accession followed by ORC-1 ``RO`` (the replacement) with the new one, the study the
  same in both IPC-3.

ORC-16 names the edit (its change-feed kind, and the operator's reason); an NTE says the same
in words, with the record the study was filed under before. Values are escaped (\\F\\ \\S\\
\\T\\ \\R\\ \\E\\), so a name or reason holding a delimiter never breaks the structure.

The sender waits for the ACK: AA or CA is done; AE, AR, CE, CR, an ACK of another message, or no
answer within the timeout is a failure, and the job retries with the same MSH-10.
"""

from __future__ import annotations

import socket
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path

from solent.protocols.hl7.ack import escape
from solent.protocols.hl7.mllp import Deframer, FramingError, frame
from solent.services.ris_notify import RisNotice, RisPatient

SENDING_APPLICATION = "SOLENT"
SENDING_FACILITY = "PACS"
ACCEPTED = ("AA", "CA")
DEFAULT_TIMEOUT_S = 30.0


def _ts(at: datetime) -> str:
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _segment(name: str, fields: dict[int, str]) -> str:
    """``name|f1|f2...`` with the given fields (already escaped) at their positions."""
    width = max(fields, default=0)
    return "|".join([name, *(fields.get(n, "") for n in range(1, width + 1))])


def _components(*values: str | None) -> str:
    """Components of one field, each escaped, trailing empty ones dropped."""
    out = [escape(v or "") for v in values]
    while out and not out[-1]:
        out.pop()
    return "^".join(out)


def _pid(p: RisPatient) -> str:
    ids = [_components(p.local_id, None, None, p.issuer, "MR")]
    if p.nhs_number:
        ids.append(_components(p.nhs_number, None, None, "NHS", "NH"))
    name = _components(*(p.name or "").split("^")[:5])
    sex = p.sex if p.sex in ("M", "F", "O") else "U"
    return _segment(
        "PID", {1: "1", 3: "~".join(ids), 5: name, 7: escape(p.birth_date or ""), 8: sex}
    )


def _order(notice: RisNotice, control: str, accession: tuple[str, str] | None, n: int) -> list[str]:
    """One ORDER group (ORC, OBR, NTE, IPC) about ``accession`` of the notice's study."""
    number, issuer = accession if accession is not None else ("", "")
    filler = _components(number, issuer)
    reason = _components(notice.kind, notice.reason[:199], "L")
    orc = _segment("ORC", {1: control, 3: filler, 9: _ts(notice.at), 16: reason})
    service = _components(None, notice.study_description or "Imaging study")
    obr = _segment("OBR", {1: str(n), 3: filler, 4: service, 18: escape(number)})
    nte = _segment("NTE", {1: "1", 2: "L", 3: escape(_note(notice))})
    procedure, step = notice.steps.get(number, ("", ""))
    ipc = _segment(
        "IPC",
        {
            1: filler,
            2: escape(procedure),
            3: escape(notice.study_uid),
            4: escape(step),
            5: _components(notice.modality, None, "DCM") if notice.modality else "",
        },
    )
    return [orc, obr, nte, ipc]


def _note(notice: RisNotice) -> str:
    p = notice.patient
    what = f"{notice.kind}: study {notice.study_uid} is filed under {p.local_id} ({p.issuer})"
    if notice.prior_patient is not None:
        q = notice.prior_patient
        what += f", before under {q.local_id} ({q.issuer})"
    if notice.from_study_uid is not None:
        what += f"; series of study {notice.from_study_uid} moved into it"
    if notice.old_accession is not None:
        what += f"; accession {notice.old_accession[0]} ({notice.old_accession[1]}) replaced"
        if notice.accession is not None:
            what += f" by {notice.accession[0]} ({notice.accession[1]})"
    if notice.edit is not None:
        what += f"; Solent study edit {notice.edit}"
    return what + (f". Reason: {notice.reason}" if notice.reason else "")


def build_notification(notice: RisNotice) -> str:
    """The ER7 message (segments ended by CR) telling ``notice.destination`` of the edit."""
    dest = notice.destination
    # Numbered after the name, as _segment does: MSH's first field after the name is MSH-2
    # (MSH-1 is the field separator itself), so 2 here is MSH-3 and so on.
    msh = _segment(
        "MSH",
        {
            1: "^~\\&",
            2: SENDING_APPLICATION,
            3: SENDING_FACILITY,
            4: escape(dest.application),
            5: escape(dest.facility),
            6: _ts(notice.at),
            8: "OMI^O23^OMI_O23",
            9: escape(notice.control_id),
            10: "P",
            11: "2.5",
            16: "GBR",
            17: "UNICODE UTF-8",
        },
    )
    segments = [msh, _pid(notice.patient)]
    if notice.order_control == "RU":
        segments += _order(notice, "RU", notice.old_accession, 1)
        segments += _order(notice, "RO", notice.accession, 2)
    else:
        segments += _order(notice, notice.order_control, notice.accession, 1)
    return "\r".join(segments) + "\r"


class NoAnswer(OSError):
    """The RIS closed the connection, or said nothing within the timeout, or sent no MLLP."""


def read_ack(ack: str, control_id: str) -> tuple[str, str]:
    """(MSA-1, MSA-3) of the ACK; ("", why) when it is no ACK of the message ``control_id``."""
    lines = [line for line in ack.replace("\n", "\r").split("\r") if line]
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 4:
        return "", "the answer is no HL7 message"
    sep = lines[0][3]
    msa = next((line.split(sep) for line in lines if line.startswith("MSA")), None)
    if msa is None:
        return "", "the answer has no MSA segment"
    code, acked, text = ([*msa[1:4], "", "", ""])[:3]
    if acked != control_id:
        return "", f"the ACK names message {acked!r}, not {control_id!r}"
    return code, text


class RisSender:
    """Sends one notice and returns (MSA-1, MSA-3); raises OSError when there is no answer.

    ``client_cert``/``client_key``: the certificate presented to a RIS that asks for one on a
    TLS connection (the archive's own MLLP TLS certificate)."""

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        client_cert: Path | None = None,
        client_key: Path | None = None,
    ) -> None:
        self.timeout = timeout
        self.client_cert = client_cert
        self.client_key = client_key

    def __call__(self, notice: RisNotice) -> tuple[str, str]:
        message = build_notification(notice).encode("utf-8")
        dest = notice.destination
        with socket.create_connection((dest.host, dest.port), timeout=self.timeout) as raw:
            sock: socket.socket = raw
            if dest.tls:
                sock = self._tls(dest.tls_ca).wrap_socket(raw, server_hostname=dest.host)
            sock.settimeout(self.timeout)
            sock.sendall(frame(message))
            ack = self._receive(sock, time.monotonic() + self.timeout)
        return read_ack(ack.decode("utf-8", errors="replace"), notice.control_id)

    def _tls(self, ca: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.client_cert is not None and self.client_key is not None:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context

    @staticmethod
    def _receive(sock: socket.socket, deadline: float) -> bytes:
        """The first message answered before ``deadline``: the timeout bounds the whole ACK,
        so a RIS sending a byte now and then cannot hold the job (and its worker) for ever."""
        deframer = Deframer(max_bytes=1 << 20)
        while True:
            try:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                data = sock.recv(65536)
            except TimeoutError as exc:
                raise NoAnswer("the RIS sent no ACK within the timeout") from exc
            if not data:
                raise NoAnswer("the RIS closed the connection without an ACK")
            try:
                messages = deframer.feed(data)
            except FramingError as exc:
                raise NoAnswer(f"the RIS answered what is no MLLP: {exc}") from exc
            if messages:
                return messages[0]
