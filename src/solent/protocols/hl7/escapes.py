"""Reading HL7 v2 escape sequences (v2.5 §2.7) in a received field as plain text.

Written here rather than taken from python-hl7's ``unescape``, which expands ``\\.sp2000000000\\``
into two billion line breaks (a few bytes from a sender become gigabytes in the server), raises
on ``\\.brzz\\`` and logs a traceback for each ``\\Xzz\\``. Here every sequence has a bounded
expansion and a malformed one reads as nothing, never as an error.
"""

from __future__ import annotations

#: At most this many line breaks or spaces from one ``\\.spN\\`` or ``\\.skN\\``.
MAX_REPEAT = 20
#: Controls other than TAB, LF and CR read as a space: no HL7 text holds them, and a NUL or a
#: file separator stored in a name would break the journal (PostgreSQL) or an MLLP frame.
_CONTROLS = {c: " " for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)} | {0x7F: " "}


def unescape(value: str, separators: str, escape: str) -> str:
    """``value`` with its escape sequences read as text.

    ``separators``: the message's field, component, repetition and subcomponent separators (in
    that order, MSH-1 then MSH-2 without the escape character). Formatting commands of FT text
    read as plain text: a line break (``\\.br\\``, ``\\.spN\\``, ``\\.ce\\``) as LF,
    highlighting (``\\H\\``, ``\\N\\``), fill mode and character set switches (``\\C..\\``,
    ``\\M..\\``) and local escapes (``\\Z..\\``) as nothing. An escape left open at the end of
    the field is dropped, as python-hl7 drops it."""
    if not escape or escape not in value:
        return value
    simple = {
        "F": separators[0],
        "S": separators[1],
        "R": separators[2],
        "T": separators[3],
        "E": escape,
        "H": "",
        "N": "",
    }
    out: list[str] = []
    pos = 0
    while True:
        start = value.find(escape, pos)
        if start < 0:
            out.append(value[pos:])
            break
        out.append(value[pos:start])
        end = value.find(escape, start + 1)
        if end < 0:
            break  # unterminated: dropped
        out.append(_sequence(value[start + 1 : end], simple))
        pos = end + 1
    return "".join(out)


def _sequence(body: str, simple: dict[str, str]) -> str:
    if body in simple:
        return simple[body]
    if body.startswith("X"):
        return _hex(body[1:])
    if body.startswith("."):
        command, argument = body[1:3], body[3:]
        if command in ("br", "ce"):
            return "\n"
        if command == "sp":
            return "\n" * _count(argument)
        if command == "sk":
            return " " * _count(argument)
        if command in ("in", "ti"):
            return "    "
    return ""  # .fi, .nf, \C..\, \M..\, \Z..\ and anything unknown or malformed


def _count(argument: str) -> int:
    """The repeat count of ``\\.spN\\``/``\\.skN\\``: 1 when absent or not a number."""
    digits = argument.strip().lstrip("+")
    if not digits.isdecimal() or not digits.isascii():
        return 1
    return max(0, min(int(digits[:4]), MAX_REPEAT))


def _hex(digits: str) -> str:
    """``\\Xhh..\\``: each pair a byte, read as Latin-1 (as python-hl7 reads it); nothing
    when the digits are not an even run of hexadecimal pairs."""
    if len(digits) % 2 or not digits:
        return ""
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        return ""
    return raw.decode("latin-1").translate(_CONTROLS)
