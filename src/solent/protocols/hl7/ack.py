"""Building ACK messages (original acknowledgment mode) with a readable reason."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime

from solent.protocols.hl7.er7 import Message

_counter = itertools.count(1)


def escape(text: str) -> str:
    """HL7 escaping of the default delimiters, so a reason never breaks the ACK's structure."""
    out = text.replace("\\", "\\E\\")
    for ch, code in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(ch, code)
    return out.replace("\r", " ").replace("\n", " ")


def _control_id() -> str:
    return f"SOLENT{int(time.time() * 1000)}{next(_counter):06d}"


def build_ack(msg: Message | None, code: str, reason: str) -> str:
    """MSH, MSA (with MSA-3 text) and, unless AA, an ERR segment (HL7 v2.5 layout)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    if msg is None:
        msh = f"MSH|^~\\&|SOLENT|PACS|||{stamp}||ACK|{_control_id()}|P|2.4"
        msa = f"MSA|{code}||{escape(reason)[:500]}"
    else:
        h = msg.header
        msh = "|".join(
            [
                "MSH",
                "^~\\&",
                escape(h.receiving_application or "SOLENT"),
                escape(h.receiving_facility or "PACS"),
                escape(h.sending_application),
                escape(h.sending_facility),
                stamp,
                "",
                f"ACK^{escape(h.trigger)}^ACK",
                _control_id(),
                "P",
                escape(h.version or "2.4"),
            ]
        )
        msa = f"MSA|{code}|{escape(h.control_id)}|{escape(reason)[:500]}"
    segments = [msh, msa]
    if code != "AA":
        error = (
            "200^Unsupported message type^HL70357"
            if "unsupported" in reason
            else ("207^Application internal error^HL70357")
        )
        segments.append(f"ERR|||{error}|E|||{escape(reason)[:500]}")
    return "\r".join(segments) + "\r"
