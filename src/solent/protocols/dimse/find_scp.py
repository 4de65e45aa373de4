"""C-FIND SCP (Patient Root and Study Root) on the shared query engine.

The identifier becomes ``parse_query`` keys; ``QueryService.find`` applies matching, patient
identity scoping (R24) and the cap. Every requested key comes back in each match (empty when
Solent does not keep it, with the Pending-Warning status FF01 that PS3.4 C.4.1.1.4 defines).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pynetdicom.events import Event

from solent.domain.attributes import Level
from solent.domain.matching import InformationModel, parse_query
from solent.errors import InvalidInput
from solent.protocols.dimse import audit
from solent.protocols.dimse.access import Operation, Peer
from solent.protocols.dimse.status import (
    CANCEL,
    FIND_OUT_OF_RESOURCES,
    IDENTIFIER_MISMATCH,
    NOT_AUTHORIZED,
    PENDING,
    PENDING_WARNING,
    UNABLE_TO_PROCESS,
    status,
)
from solent.services.audit_door import AuditDoor
from solent.services.query import QueryService
from solent.services.trust_view import OTHER_IDS

log = logging.getLogger(__name__)

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
MODELS = {
    PATIENT_ROOT_FIND: InformationModel.PATIENT_ROOT,
    STUDY_ROOT_FIND: InformationModel.STUDY_ROOT,
}
SKIP = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "TimezoneOffsetFromUTC"}
# Requested keyword -> row key of the query engine, where they differ.
ROW_ALIASES = {"AvailableTransferSyntaxUID": "TransferSyntaxUID"}
# Sequences Solent fills itself from the row (the engine matches on their item paths).
SEQUENCES = ("OtherPatientIDsSequence", "IssuerOfAccessionNumberSequence")


def _wire_value(elem: DataElement) -> str | None:
    value = elem.value
    if value is None or value == "" or (isinstance(value, (list, MultiValue)) and not value):
        return None
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1", "replace").strip("\x00 ")
    return str(value).strip()


def identifier_keys(identifier: Dataset) -> tuple[dict[str, str | list[str] | None], list[str]]:
    """(matching keys for parse_query, requested top-level keywords in order)."""
    keys: dict[str, str | list[str] | None] = {}
    requested: list[str] = []
    for elem in identifier:
        kw = elem.keyword or f"{elem.tag:08X}"
        if kw in SKIP or elem.tag.group in (0x0000, 0x0002) or elem.tag.is_private:
            continue
        requested.append(kw)
        if elem.VR == "SQ":
            items = list(elem.value or [])
            if items:
                for sub in items[0]:
                    if sub.VR != "SQ" and sub.keyword:
                        keys[f"{kw}.{sub.keyword}"] = _wire_value(sub)
            continue
        keys[kw] = _wire_value(elem)
    return keys, requested


def _set(ds: Dataset, keyword: str, value: Any) -> None:
    if value is None or value == "":
        setattr(ds, keyword, None)
        return
    if isinstance(value, bool):
        value = "Y" if value else "N"
    if isinstance(value, list):
        value = [str(v) for v in value]
    try:
        setattr(ds, keyword, value)
    except Exception:
        setattr(ds, keyword, None)


def response_identifier(
    row: dict[str, Any], requested: list[str], level: str, ae_title: str
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    ds.RetrieveAETitle = ae_title
    wanted = list(dict.fromkeys([*requested, "IssuerOfPatientID"]))
    if level == "PATIENT" or "PatientID" in requested:
        wanted.append("PatientID")
    for kw in dict.fromkeys(wanted):
        if kw in SEQUENCES:
            continue
        if len(kw) == 8 and all(c in "0123456789ABCDEF" for c in kw):
            name = keyword_for_tag(int(kw, 16))
            if not name:
                continue
            kw = name
        _set(ds, kw, row.get(ROW_ALIASES.get(kw, kw)))
    if "OtherPatientIDsSequence" in requested:
        items = []
        for pid, issuer in row.get(OTHER_IDS) or ():  # the study's own record (trust_view)
            item = Dataset()
            item.PatientID = pid
            item.IssuerOfPatientID = issuer
            item.TypeOfPatientID = "TEXT"
            items.append(item)
        if row.get("NHSNumber"):
            item = Dataset()
            item.PatientID = row["NHSNumber"]
            item.IssuerOfPatientID = "NHS"
            item.TypeOfPatientID = "TEXT"
            items.append(item)
        ds.OtherPatientIDsSequence = Sequence(items)
    if "IssuerOfAccessionNumberSequence" in requested:
        items = []
        if row.get("IssuerOfAccessionNumber"):
            item = Dataset()
            item.LocalNamespaceEntityID = row["IssuerOfAccessionNumber"]
            items.append(item)
        ds.IssuerOfAccessionNumberSequence = Sequence(items)
    return ds


def handle_find(
    event: Event,
    query: QueryService,
    trail: AuditDoor,
    peer: Peer | None,
    *,
    max_results: int,
    ae_title: str,
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    if peer is None or not peer.may(Operation.QUERY):
        audit.denied(trail, peer, "c-find", "this node may not query")
        yield status(NOT_AUTHORIZED, "this node may not query"), None
        return
    try:
        identifier = event.identifier
        level_name = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        level = Level(level_name)
        keys, requested = identifier_keys(identifier)
        model = MODELS.get(str(event.request.AffectedSOPClassUID))
        parsed = parse_query(level, keys, ignore_unknown=True, model=model)
        result = query.find(
            peer.principal,
            parsed,
            limit=None,
            max_results=max_results,
            channel="dimse c-find",  # audited by the query service (issue 6)
            keys=keys,
        )
    except InvalidInput as exc:  # bad value, range ending before it starts, R24 refusal
        yield status(IDENTIFIER_MISMATCH, str(exc)), None
        return
    except ValueError:
        yield status(IDENTIFIER_MISMATCH, "invalid Query/Retrieve Level"), None
        return
    except Exception as exc:
        log.exception("C-FIND failed")
        yield status(UNABLE_TO_PROCESS, f"query failed: {type(exc).__name__}"), None
        return
    if result.capped:
        yield (
            status(FIND_OUT_OF_RESOURCES, f"more than {max_results} matches: narrow the query"),
            None,
        )
        return
    pending = PENDING_WARNING if parsed.ignored else PENDING
    for row in result.rows:
        if event.is_cancelled:
            yield CANCEL, None
            return
        yield pending, response_identifier(row, requested, level.value, ae_title)
