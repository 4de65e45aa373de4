"""C-STORE SCP: the received bytes, spooled untouched, go through the one ingest pipeline.

Status table (PS3.4 B.2.3): success only once ingest says the instance is durable and indexed;
a re-sent identical instance is success too. Failures carry an Error Comment and leave the
association open.

Storescu waits for each status, so on one association every millisecond of the handler is lost
throughput: the spool was hashed while it arrived, and its fsyncs run on I/O threads while
ingest parses and writes the index rows (FileBlobStore.place_file).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from solent.domain.outcomes import RejectReason, StoreResult
from solent.ingest import Ingestor
from solent.protocols.dimse.access import Operation, Peer
from solent.protocols.dimse.net import SpoolFile, spool_of
from solent.protocols.dimse.status import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    STORED_WITH_WARNING,
    SUCCESS,
    status,
)

log = logging.getLogger(__name__)

REJECT_STATUS: dict[RejectReason, int] = {
    RejectReason.MALFORMED: CANNOT_UNDERSTAND,
    RejectReason.MISSING_ATTRIBUTE: DATASET_MISMATCH,
    RejectReason.INVALID_UID: DATASET_MISMATCH,
    RejectReason.NOT_AN_INSTANCE: DATASET_MISMATCH,
    RejectReason.CONFLICT: CANNOT_UNDERSTAND,
    RejectReason.PATIENT_MISMATCH: CANNOT_UNDERSTAND,
    RejectReason.UNKNOWN_TRUST: NOT_AUTHORIZED,
    RejectReason.NOT_PERMITTED: NOT_AUTHORIZED,
    RejectReason.STORAGE_FAILURE: OUT_OF_RESOURCES,
    RejectReason.TOO_LARGE: OUT_OF_RESOURCES,
}


def result_status(result: StoreResult) -> Dataset:
    if result.ok:
        return status(STORED_WITH_WARNING, result.warning) if result.warning else status(SUCCESS)
    assert result.reason is not None
    return status(REJECT_STATUS.get(result.reason, CANNOT_UNDERSTAND), result.message)


def handle_store(event: Event, ingestor: Ingestor, peer: Peer | None) -> Dataset:
    req: Any = event.request
    code, comment = store_spooled(
        Path(event.dataset_path),
        spool_of(req),
        (str(req.AffectedSOPClassUID), str(req.AffectedSOPInstanceUID)),
        ingestor,
        peer,
    )
    return status(code, comment)


def store_spooled(
    path: Path,
    spool: SpoolFile | None,
    expect: tuple[str, str],
    ingestor: Ingestor,
    peer: Peer | None,
) -> tuple[int, str]:
    """Ingest one received dataset; the (status, error comment) of its C-STORE-RSP.

    Shared by the pynetdicom handler and the fast upper layer (ul/)."""
    if peer is None or not peer.may(Operation.STORE):
        return NOT_AUTHORIZED, "this node may not store here"
    # The request/dataset identity check (A900) runs on ingest's own parse: one parse, not two.
    # The spool was hashed while it arrived, so ingest moves it into the store at once and
    # its fsyncs run while ingest parses (Ingestor._prepare, FileBlobStore.place_file).
    try:
        result = ingestor.ingest_file(
            path,
            peer.principal,
            peer.provenance,
            move=True,
            sha256=spool.sha256() if spool is not None else None,
            expect=expect,
        )
    except Exception as exc:
        log.exception("C-STORE ingest failed")
        return OUT_OF_RESOURCES, f"storage failure: {type(exc).__name__}"
    if result.ok:
        return (STORED_WITH_WARNING, result.warning) if result.warning else (SUCCESS, "")
    assert result.reason is not None
    return REJECT_STATUS.get(result.reason, CANNOT_UNDERSTAND), result.message
