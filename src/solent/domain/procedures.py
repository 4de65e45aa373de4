"""Procedure codes as received, and the consortium's mapping to NICIP / SNOMED CT (R19).

Four trusts, four procedure catalogues: a RIS sends ``CTCHE^CT chest^LOCAL`` where another sends
``CCHAPC^CT chest abdomen pelvis with contrast^NICIP``. Prior relevance (R47), hanging protocols
and reporting compare the *mapped* code, never the free text. The mapping table is the
consortium's to maintain (a CSV file, ``SOLENT_PROCEDURE_MAP``); one row maps what a trust sends
to the normalised codes and the body region:

    issuer,coding_system,code,nicip,snomed,body_region,label

``issuer`` is the trust that sends the code (``*``: any trust); ``coding_system`` as it arrives
(OBR-4.3, Coding Scheme Designator; ``*``: any); ``code`` as received; ``body_region`` one
region or several joined by ``;`` (a CT of chest, abdomen and pelvis: ``CHEST;ABDOMEN;PELVIS``).
A row whose ``coding_system`` is ``DESCRIPTION`` matches a Study Description / OBR-4.2 text
instead (case and spacing ignored): the fallback for studies that carry no code. A received code
whose system is NICIP (or SNOMED CT) and that has no row is taken as already normalised, without
a body region. Codes match without regard to case.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from solent.errors import InvalidInput

ANY = "*"
DESCRIPTION = "DESCRIPTION"
COLUMNS = ("issuer", "coding_system", "code", "nicip", "snomed", "body_region", "label")
#: Coding scheme designators that name the normalised sets themselves.
NICIP_SYSTEMS = frozenset({"NICIP"})
SNOMED_SYSTEMS = frozenset({"SCT", "SNOMED", "SNOMEDCT", "SNM", "http://snomed.info/sct"})
_NICIP = re.compile(r"[A-Z0-9]{4,7}")
_SNOMED = re.compile(r"[0-9]{6,18}")
_REGION = re.compile(r"[A-Z][A-Z0-9_]{0,15}(;[A-Z][A-Z0-9_]{0,15})*")


@dataclass(frozen=True, slots=True)
class Mapped:
    """The normalised procedure: what relevance compares (``key``) and the region."""

    nicip: str | None
    snomed: str | None
    body_region: str | None
    source: str  # "map" (a row of the table), "as-received" (already NICIP/SNOMED CT)

    @property
    def regions(self) -> frozenset[str]:
        """The body regions (``CHEST;ABDOMEN;PELVIS`` in the table: three)."""
        return frozenset(r for r in (self.body_region or "").split(";") if r)

    @property
    def key(self) -> str | None:
        """One comparable code: NICIP when known (the NHS set), else SNOMED CT."""
        if self.nicip:
            return f"NICIP:{self.nicip}"
        return f"SCT:{self.snomed}" if self.snomed else None


def normal_text(text: str) -> str:
    """A description as the table matches it: upper case, single spaces."""
    return " ".join(text.upper().split())


class ProcedureMap:
    """The mapping table in memory; look-ups try the sending trust's rows before ``*`` rows."""

    def __init__(self, rows: dict[tuple[str, str, str], Mapped], source: str = "") -> None:
        self._rows = rows
        self.source = source

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, issuer: str | None, system: str | None, code: str | None) -> Mapped | None:
        """The mapped procedure of a received code, or None (unmapped)."""
        if not code:
            return None
        system_u = (system or "").strip().upper()
        code = code.strip()
        for who in (issuer or ANY, ANY):
            for sys in (system_u, ANY):
                found = self._rows.get((who, sys, code.upper()))
                if found is not None:
                    return found
        if system_u in NICIP_SYSTEMS and _NICIP.fullmatch(code.upper()):
            return Mapped(code.upper(), None, None, "as-received")
        if system_u in {s.upper() for s in SNOMED_SYSTEMS} and _SNOMED.fullmatch(code):
            return Mapped(None, code, None, "as-received")
        return None

    def by_description(self, issuer: str | None, text: str | None) -> Mapped | None:
        """The mapped procedure of a free-text description (the table's DESCRIPTION rows)."""
        if not text or not text.strip():
            return None
        key = normal_text(text)
        for who in (issuer or ANY, ANY):
            found = self._rows.get((who, DESCRIPTION, key))
            if found is not None:
                return found
        return None


EMPTY = ProcedureMap({}, "")


def parse_map(text: str, source: str = "") -> ProcedureMap:
    """The table from CSV text (header row naming COLUMNS); InvalidInput naming the bad line."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS[:6] if c not in (reader.fieldnames or [])]
    if missing:
        raise InvalidInput(f"{source or 'procedure map'}: missing column(s) {', '.join(missing)}")
    rows: dict[tuple[str, str, str], Mapped] = {}
    for n, raw in enumerate(reader, start=2):
        row = {k: (v or "").strip() for k, v in raw.items() if k}
        if not any(row.values()) or row["issuer"].startswith("#"):
            continue  # blank lines and comments
        where = f"{source or 'procedure map'} line {n}"
        issuer, system, code = (
            row["issuer"] or ANY,
            row["coding_system"].upper() or ANY,
            row["code"],
        )
        nicip, snomed, region = row["nicip"].upper(), row["snomed"], row["body_region"].upper()
        if not code:
            raise InvalidInput(f"{where}: no code")
        if not nicip and not snomed:
            raise InvalidInput(f"{where}: neither a NICIP nor a SNOMED CT code to map {code} to")
        if nicip and not _NICIP.fullmatch(nicip):
            raise InvalidInput(f"{where}: NICIP code {nicip!r} is not 4-7 letters and digits")
        if snomed and not _SNOMED.fullmatch(snomed):
            raise InvalidInput(f"{where}: SNOMED CT id {snomed!r} is not 6-18 digits")
        if region and (len(region) > 32 or not _REGION.fullmatch(region)):
            raise InvalidInput(
                f"{where}: body region {region!r} is not short upper-case names joined by ;"
            )
        key_code = normal_text(code) if system == DESCRIPTION else code.upper()
        key = (issuer.upper() if issuer != ANY else ANY, system, key_code)
        if key in rows:
            raise InvalidInput(f"{where}: {issuer} {system} {code} is mapped twice")
        rows[key] = Mapped(nicip or None, snomed or None, region or None, "map")
    return ProcedureMap(rows, source)
