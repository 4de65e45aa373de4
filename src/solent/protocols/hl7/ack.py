"""Building ACK messages (original acknowledgment mode) with a readable reason."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime

from solent.protocols.hl7 import charsets
from solent.protocols.hl7.er7 import Header, Message

_counter = itertools.count(1)


#: Every C0 control character and DEL, each read as a space: CR ends a segment, and MLLP's
#: VT (start block) and FS (end block) inside a value would end the frame early at the peer.
_CONTROLS = {c: " " for c in (*range(0x20), 0x7F)}


def escape(text: str) -> str:
    """HL7 escaping of the default delimiters, so a reason never breaks the ACK's structure;
    control characters are written as spaces (no segment, and no MLLP frame, ends inside)."""
    out = text.replace("\\", "\\E\\")
    for ch, code in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(ch, code)
    return out.translate(_CONTROLS)


def _control_id() -> str:
    return f"SOLENT{int(time.time() * 1000)}{next(_counter):06d}"


def reply_header(h: Header, message_type: str) -> str:
    """The MSH of an answer to ``h``: sender and receiver swapped, a control ID of its own,
    the message's processing ID (MSH-11), version and character set (MSH-18)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    return "|".join(
        [
            "MSH",
            "^~\\&",
            escape(h.receiving_application or "SOLENT"),
            escape(h.receiving_facility or "PACS"),
            escape(h.sending_application),
            escape(h.sending_facility),
            stamp,
            "",
            message_type,
            _control_id(),
            escape(h.processing_id or "P"),
            escape(h.version or "2.4"),
            *(["", "", "", "", "", escape(h.charset)] if h.charset else []),
        ]
    )


def build_ack(msg: Message | Header | None, code: str, reason: str) -> str:
    """MSH, MSA (with MSA-3 text) and, unless AA, an ERR segment (HL7 v2.5 layout).

    ``msg`` is the message, or only its header when the rest could not be read (the control
    ID still goes back in MSA-2); None when not even MSH-10 could be read. The ACK takes the
    message's processing ID (MSH-11) and character set (MSH-18): a receiver in training mode
    refuses production ACKs, and one sending 8859/1 decodes the answer as 8859/1."""
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    if msg is None:
        msh = f"MSH|^~\\&|SOLENT|PACS|||{stamp}||ACK|{_control_id()}|P|2.4"
        msa = f"MSA|{code}||{escape(reason)[:500]}"
    else:
        h = msg.header if isinstance(msg, Message) else msg
        msh = reply_header(h, f"ACK^{escape(h.trigger)}^ACK" if h.trigger else "ACK")
        msa = f"MSA|{code}|{escape(h.control_id)}|{escape(reason)[:500]}"
    segments = [msh, msa]
    if code != "AA":
        number, name = _error(reason)
        # ERR-1 (v2.4's error code and location) and ERR-3/ERR-4 (v2.5): a receiver of either
        # version finds the HL7 table 0357 code where it looks.
        segments.append(
            f"ERR|^^^{number}&{name}&HL70357||{number}^{name}^HL70357|E|||{escape(reason)[:500]}"
        )
    return "\r".join(segments) + "\r"


#: Reason wording -> HL7 table 0357 error condition; anything else is 207.
_ERRORS = (
    ("unsupported event", ("201", "Unsupported event code")),
    ("unsupported message type", ("200", "Unsupported message type")),
    ("was already used by", ("205", "Duplicate key identifier")),  # a reused MSH-10
    ("is empty", ("101", "Required field missing")),
    ("unsupported version id", ("203", "Unsupported version id")),
)


def _error(reason: str) -> tuple[str, str]:
    text = reason.lower()
    return next(
        (error for words, error in _ERRORS if words in text),
        ("207", "Application internal error"),
    )


def ack_bytes(ack: str, msg: Message | Header | None) -> bytes:
    """The ACK in the character set its MSH-18 names (the message's, the one it was read in);
    UTF-8 when it names none we know."""
    h = msg.header if isinstance(msg, Message) else msg
    name = charsets.codec(h.charset) if h is not None else None
    return ack.encode(name or "utf-8", errors="replace")
