"""ISO 2022 escape sequences left in decoded DICOM text.

A Specific Character Set with code extensions (PS3.5 6.1.2.5) switches sets inside a value with
escape sequences; they belong to the encoded bytes, never to the text. pydicom's decoder for
ISO 2022 IR 58 (GB 2312) keeps them ('Zhang^XiaoDong=\\x1b$)A张^\\x1b$)A小东'), and they would
reach QIDO JSON, C-FIND responses and WADO metadata as control characters; they are removed.
"""

from __future__ import annotations

import re

#: ESC, intermediate bytes 0x20-0x2F, a final byte 0x30-0x7E (ISO/IEC 2022 6.3.1).
_ESCAPE = re.compile("\x1b[\x20-\x2f]+[\x30-\x7e]")
#: The same in JSON text, where ESC is written \u001b.
_ESCAPE_IN_JSON = re.compile(r"\\u001b[\x20-\x2f]+[\x30-\x7e]")


def strip(text: str) -> str:
    """``text`` without escape sequences."""
    return _ESCAPE.sub("", text) if "\x1b" in text else text


def strip_json(text: str) -> str:
    """JSON ``text`` whose strings hold no escape sequences."""
    return _ESCAPE_IN_JSON.sub("", text) if "\\u001b" in text else text
