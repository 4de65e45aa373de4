"""A person's name as DICOM keeps it (PN, PS3.5 6.2): ``family^given^middle``, groups split by
``=`` and values by ``\\``. DICOM has no escape for them, so a name part holding one (a FHIR
family ``O^BRIEN``, an HL7 component ``O\\S\\BRIEN``) would be stored as other parts: family
``O``, given ``BRIEN``. Such a part is refused by the adapter that reads it, not reshaped."""

from __future__ import annotations

#: The PN delimiters: component, component group, value.
PN_DELIMITERS = frozenset("^=\\")


def part_problem(part: str) -> str | None:
    """Why ``part`` cannot be one component of a PN, or None when it can."""
    if PN_DELIMITERS & set(part):
        return "holds ^, = or \\, which DICOM uses to separate the parts of a name"
    if any(ord(c) < 0x20 or c == "\x7f" for c in part):
        return "holds a control character"
    return None
