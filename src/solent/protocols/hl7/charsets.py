"""The character set of an HL7 v2 message (MSH-18, HL7 table 0211) as a Python codec.

A message is bytes until MSH-18 is read: the MSH segment is ASCII in every character set
table 0211 allows for MLLP (UTF-16/32 aside), so MSH-18 is read from the bytes, and the
message is then decoded with the set it names. Without MSH-18 (or with one we cannot decode),
UTF-8 is tried and Latin-1 taken when it fails, as most feeds without MSH-18 send one of those.
"""

from __future__ import annotations

import codecs

#: HL7 table 0211 values with a Python codec (the 8859 parts are handled by number).
_CODECS = {
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "GB 18030": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
}


def codec(charset: str) -> str | None:
    """The codec of one MSH-18 value (its first repetition), or None when we have none."""
    name = charset.split("~", 1)[0].strip().upper()
    name = f"iso8859-{name[5:]}" if name.startswith("8859/") else _CODECS.get(name, "")
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def declared(data: bytes) -> str:
    """MSH-18 of the first MSH segment in ``data`` (a message or a batch), as sent, or ''."""
    start = data.find(b"MSH")
    line = data[start:].split(b"\r", 1)[0].split(b"\n", 1)[0] if start >= 0 else b""
    if len(line) < 8:
        return ""
    fields = line[4:].split(line[3:4])  # MSH-n is fields[n - 2]
    if len(fields) < 17:
        return ""
    return fields[16].decode("ascii", errors="replace")


def decode(data: bytes) -> str:
    """The message as text, in the character set its MSH-18 names."""
    name = codec(declared(data))
    if name is not None and name != "utf-8":
        try:
            return data.decode(name)
        except UnicodeDecodeError:
            pass  # mislabelled: read it as an unlabelled message
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
