"""HL7 v2 escape sequences read as text (protocols/hl7/escapes.py)."""

from __future__ import annotations

import pytest

from solent.protocols.hl7.escapes import MAX_REPEAT, unescape

SEPARATORS = "|^~&"


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("O\\F\\BRIEN", "O|BRIEN"),
        ("A\\S\\B\\R\\C\\T\\D\\E\\E", "A^B~C&D\\E"),
        ("\\H\\BOLD\\N\\ plain", "BOLD plain"),
        ("line one\\.br\\line two", "line one\nline two"),
        ("a\\X0D0A\\b", "a\r\nb"),
        ("caf\\XE9\\", "café"),
        ("two\\.sp2\\lines", "two\n\nlines"),
        ("skip\\.sk3\\three", "skip   three"),
        ("\\.in4\\indented", "    indented"),
        ("\\.fi\\\\.nf\\fill", "fill"),
        ("\\C2842\\kanji\\C2822\\", "kanji"),
        ("\\Zlocal\\", ""),
        ("open \\F", "open "),  # left open: dropped, as python-hl7 drops it
        ("no escapes", "no escapes"),
    ],
)
def test_each_sequence_reads_as_text(field: str, text: str) -> None:
    assert unescape(field, SEPARATORS, "\\") == text


@pytest.mark.parametrize(
    "field",
    ["\\.sp2000000000\\", "\\.sk99999999999999999999\\", "\\.sp" + "9" * 5000 + "\\"],
)
def test_a_repeat_count_is_bounded(field: str) -> None:
    """python-hl7 made two billion line breaks of the first (gigabytes from 18 bytes)."""
    assert 0 < len(unescape(field, SEPARATORS, "\\")) <= MAX_REPEAT


@pytest.mark.parametrize(
    "field", ["\\.brzz\\", "\\.spzz\\", "\\Xzz\\", "\\X0\\", "\\X\\", "\\Q\\", "\\\\"]
)
def test_a_malformed_sequence_never_raises(field: str) -> None:
    """python-hl7 raised on \\.brzz\\ (the message went unanswered) and logged a traceback for
    \\Xzz\\."""
    assert len(unescape(field, SEPARATORS, "\\")) <= 1


def test_controls_written_by_hex_escape_read_as_spaces() -> None:
    """A NUL, a file separator or a vertical tab by \\Xhh\\ would break the journal on
    PostgreSQL or an MLLP frame sent on; TAB, CR and LF are text."""
    assert unescape("A\\X00\\B\\X1C\\C\\X0B\\D\\X09\\E", SEPARATORS, "\\") == "A B C D\tE"


def test_the_message_s_own_encoding_characters_are_used() -> None:
    assert unescape("X#F#Y#S#Z", "!@*$", "#") == "X!Y@Z"
