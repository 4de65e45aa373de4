"""Procedure coding (R19): codes kept as received, mapped by the consortium's table.

The table is a CSV file (``SOLENT_PROCEDURE_MAP``; format in domain/procedures.py), read at
start and again whenever the file changes (its modification time is looked at, at most once a
second), so the consortium edits one file and every process follows. A file that does not
parse is refused at start; a bad edit later keeps the last good table and logs why.

Orders are coded when they are filed (InboxService); a study when it arrives (the ``procedures``
change-feed consumer, jobs/tasks.py), from its order (same accession and issuer), else its DICOM
Requested Procedure Code Sequence, else Procedure Code Sequence, else Study Description.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from solent.domain.procedures import EMPTY, Mapped, ProcedureMap, parse_map
from solent.errors import ConfigurationError, InvalidInput
from solent.index import procedures as store
from solent.index.identity import study_by_uid
from solent.index.sql import Index

log = logging.getLogger(__name__)

REQUESTED = "00321064"  # Requested Procedure Code Sequence
PERFORMED = "00081032"  # Procedure Code Sequence
STUDY_DESCRIPTION = "00081030"


def _first_code(doc: Mapping[str, Any], tag: str) -> tuple[str, str, str] | None:
    """(code value, scheme, meaning) of the first item of a code sequence in DICOM JSON."""
    for item in (doc.get(tag) or {}).get("Value") or []:
        if not isinstance(item, dict):
            continue

        def text(t: str, it: dict[str, Any] = item) -> str:
            values = (it.get(t) or {}).get("Value") or [""]
            return str(values[0] or "").strip()

        code = text("00080100") or text("00080119") or text("00080120")
        if code:
            return code, text("00080102"), text("00080104")
    return None


def load_map(path: str) -> ProcedureMap:
    """The table in the file at ``path`` (empty path: no table)."""
    if not path:
        return EMPTY
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigurationError(f"procedure map {path}: {exc.strerror or exc}") from exc
    try:
        return parse_map(text, path)
    except InvalidInput as exc:
        raise ConfigurationError(str(exc)) from exc


class ProcedureCoding:
    """The mapping table and the coding of orders and studies with it."""

    RECHECK_SECONDS = 1.0

    def __init__(self, index: Index, path: str = "") -> None:
        self._index = index
        self._path = path
        self._map = load_map(path)
        self._mtime = self._stat()
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _stat(self) -> float | None:
        try:
            return os.stat(self._path).st_mtime if self._path else None
        except OSError:
            return None

    @property
    def table(self) -> ProcedureMap:
        """The current table (re-read when the file changed; the last good one on an error)."""
        if self._path and time.monotonic() - self._checked >= self.RECHECK_SECONDS:
            with self._lock:
                self._checked = time.monotonic()
                mtime = self._stat()
                if mtime != self._mtime:
                    self._mtime = mtime
                    try:
                        self._map = load_map(self._path)
                        log.info("procedure map %s reloaded: %d rows", self._path, len(self._map))
                    except ConfigurationError as exc:
                        log.error("procedure map not reloaded, the last good one stays: %s", exc)
        return self._map

    def map_code(
        self,
        issuer: str | None,
        system: str | None,
        code: str | None,
        description: str | None = None,
    ) -> Mapped | None:
        """The mapped procedure of a received code, else of its description; None: unmapped."""
        table = self.table
        return table.lookup(issuer, system, code) or table.by_description(issuer, description)

    def order_columns(
        self, issuer: str, system: str | None, code: str | None, description: str | None
    ) -> dict[str, str | None]:
        """The mapped columns of an order's context (all None when unmapped)."""
        found = self.map_code(issuer, system, code, description)
        return {
            "nicip_code": found.nicip if found else None,
            "snomed_code": found.snomed if found else None,
            "body_region": found.body_region if found else None,
        }

    # -- studies ----------------------------------------------------------------------------

    def code_study(self, study_uid: str) -> dict[str, Any] | None:
        """Find the study's procedure code as received, map it and record both (the
        ``study_procedure`` row); None when the study is not stored."""
        with self._index.read() as conn:
            study = study_by_uid(conn, study_uid)
            if study is None:
                return None
            order = store.order_with_context(
                conn,
                study_uid=study_uid,
                accession=study["accession_number"],
                issuer=study["accession_issuer"],
            ) or store.order_with_context(conn, study_uid=study_uid)
            doc_z = store.first_document(conn, study_uid)
        trust = str(study["trust_code"])
        doc: dict[str, Any] = json.loads(zlib.decompress(doc_z)) if doc_z else {}
        description = study["study_description"]
        found: list[tuple[str, str | None, str | None, str | None]] = []
        if order is not None and order.get("procedure_code"):
            found.append(
                (
                    "order",
                    order["procedure_code"],
                    order["procedure_coding_system"],
                    order.get("requested_procedure_description"),
                )
            )
        for source, tag in (("requested", REQUESTED), ("performed", PERFORMED)):
            item = _first_code(doc, tag)
            if item is not None:
                found.append((source, *item))
        row: dict[str, Any] | None = None
        for source, code, system, meaning in found:
            issuer = str(order["accession_issuer"]) if source == "order" and order else trust
            mapped = self.table.lookup(issuer, system, code)
            row = _row(study_uid, source, code, system, meaning, mapped)
            if mapped is not None:
                break
        if row is None or (row["nicip_code"] is None and row["snomed_code"] is None):
            mapped = self.table.by_description(trust, description)
            if mapped is not None or row is None:
                row = _row(study_uid, "description", None, None, description, mapped)
        self._index.write(lambda conn: store.record_study_procedure(conn, row))
        return row

    def study_codes(
        self, studies: Collection[Mapping[str, Any]]
    ) -> dict[str, tuple[Mapped | None, str | None]]:
        """study UID -> (mapped procedure, how it was found) of study rows (``study_uid``,
        ``trust_code``, ``study_description``): the recorded coding, else the description
        mapped now (a study not coded yet, or stored before the table had its row)."""
        with self._index.read() as conn:
            recorded = store.study_procedures(conn, [str(s["study_uid"]) for s in studies])
        out: dict[str, tuple[Mapped | None, str | None]] = {}
        for s in studies:
            uid = str(s["study_uid"])
            rec = recorded.get(uid)
            if rec is not None and (rec["nicip_code"] or rec["snomed_code"]):
                out[uid] = (
                    Mapped(rec["nicip_code"], rec["snomed_code"], rec["body_region"], "map"),
                    str(rec["source"]),
                )
                continue
            by_text = self.table.by_description(s.get("trust_code"), s.get("study_description"))
            out[uid] = (by_text, "description" if by_text else None)
        return out


def _row(
    study_uid: str,
    source: str,
    code: str | None,
    system: str | None,
    meaning: str | None,
    mapped: Mapped | None,
) -> dict[str, Any]:
    return {
        "study_uid": study_uid,
        "source": source,
        "code": (code or None) and code[:64],
        "coding_system": (system or None) and system[:32],
        "meaning": (meaning or None) and meaning[:200],
        "nicip_code": mapped.nicip if mapped else None,
        "snomed_code": mapped.snomed if mapped else None,
        "body_region": mapped.body_region if mapped else None,
    }
