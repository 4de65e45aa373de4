"""SCU side: C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET to registered remote nodes.

Used by the CLI (`solent echo|send|query|retrieve`) and by later features (forwarding,
prefetch). Files are sent as they are (no decoding) in their own transfer syntax.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import _config, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import build_context, build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from solent.domain.records import NodeRow
from solent.errors import SolentError
from solent.protocols.dimse.net import (
    STORAGE_SOP_CLASSES,
    UNCOMPRESSED,
    SolentAE,
    make_ae,
)

log = logging.getLogger(__name__)

FIND_MODELS = {
    "patient": PatientRootQueryRetrieveInformationModelFind,
    "study": StudyRootQueryRetrieveInformationModelFind,
}
MOVE_MODELS = {
    "patient": PatientRootQueryRetrieveInformationModelMove,
    "study": StudyRootQueryRetrieveInformationModelMove,
}
GET_MODELS = {
    "patient": PatientRootQueryRetrieveInformationModelGet,
    "study": StudyRootQueryRetrieveInformationModelGet,
}
MAX_CONTEXTS = 128


class AssociationFailed(SolentError):
    """The remote node rejected, aborted or did not answer the association."""


@dataclass(frozen=True, slots=True)
class SentFile:
    path: Path
    sop_instance_uid: str
    status: int | None  # None: not sent (unreadable, no context)
    comment: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and (self.status == 0 or self.status >> 12 == 0xB)


def associate(
    ae: SolentAE, node: NodeRow, contexts: list[Any] | None = None, **kwargs: Any
) -> Association:
    assoc = ae.associate(node.host, node.port, contexts=contexts, ae_title=node.ae_title, **kwargs)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted or unreachable"
        raise AssociationFailed(
            f"association with {node.ae_title} at {node.host}:{node.port} {why}"
        )
    return assoc


def echo(ae_title: str, node: NodeRow) -> int:
    ae = make_ae(ae_title)
    assoc = associate(ae, node, [build_context(Verification)])
    try:
        rsp = assoc.send_c_echo()
        return int(rsp.Status) if "Status" in rsp else -1
    finally:
        assoc.release()


def _file_identity(path: Path) -> tuple[str, str, str] | None:
    try:
        meta, _ = split_dataset(path)
        ident = (
            str(meta.get("MediaStorageSOPClassUID", "") or ""),
            str(meta.get("MediaStorageSOPInstanceUID", "") or ""),
            str(meta.get("TransferSyntaxUID", "") or ""),
        )
    except Exception:
        return None
    return ident if all(ident) else None


def send_files(
    ae_title: str,
    node: NodeRow,
    paths: Iterable[Path],
    on_result: Callable[[SentFile], None] | None = None,
) -> list[SentFile]:
    """C-STORE files in their own transfer syntax, one association per 128 contexts."""
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes, never re-encode
    results: list[SentFile] = []
    pending: list[tuple[Path, tuple[str, str, str]]] = []
    for path in paths:
        ident = _file_identity(path)
        if ident is None:
            results.append(
                SentFile(path, "", None, "no file meta with SOP class, instance and syntax")
            )
            if on_result:
                on_result(results[-1])
        else:
            pending.append((path, ident))
    ae = make_ae(ae_title)
    while pending:
        pairs: list[tuple[str, str]] = []
        batch: list[tuple[Path, tuple[str, str, str]]] = []
        for item in pending:
            pair = (item[1][0], item[1][2])
            if pair not in pairs:
                if len(pairs) == MAX_CONTEXTS:
                    continue
                pairs.append(pair)
            batch.append(item)
        pending = [p for p in pending if p not in batch]
        contexts = [build_context(sop, [ts]) for sop, ts in pairs]
        assoc = associate(ae, node, contexts)
        try:
            for path, (_sop, uid, _ts) in batch:
                try:
                    rsp = assoc.send_c_store(path)
                    code = int(rsp.Status) if "Status" in rsp else None
                    sent = SentFile(path, uid, code, str(rsp.get("ErrorComment", "")))
                except (ValueError, AttributeError, OSError) as exc:
                    sent = SentFile(path, uid, None, str(exc))
                results.append(sent)
                if on_result:
                    on_result(sent)
                if not assoc.is_established:
                    raise AssociationFailed(f"{node.ae_title} ended the association")
        finally:
            if assoc.is_established:
                assoc.release()
    return results


def find(
    ae_title: str, node: NodeRow, identifier: Dataset, model: str = "study"
) -> tuple[list[Dataset], int]:
    """(matches, final status) of a C-FIND."""
    sop = FIND_MODELS[model]
    ae = make_ae(ae_title)
    assoc = associate(ae, node, [build_context(sop)])
    matches: list[Dataset] = []
    final = -1
    try:
        for status, ds in assoc.send_c_find(identifier, sop):
            if not status or "Status" not in status:
                raise AssociationFailed(f"{node.ae_title} did not answer the C-FIND")
            final = int(status.Status)
            if final in (0xFF00, 0xFF01) and ds is not None:
                matches.append(ds)
    finally:
        if assoc.is_established:
            assoc.release()
    return matches, final


@dataclass(frozen=True, slots=True)
class RetrieveOutcome:
    status: int
    completed: int
    failed: int
    warning: int


def _outcome(responses: Iterable[tuple[Dataset, Any]]) -> RetrieveOutcome:
    final = Dataset()
    for status, _ in responses:
        if status and "Status" in status:
            final = status
    code = int(final.get("Status", -1))
    return RetrieveOutcome(
        code,
        int(final.get("NumberOfCompletedSuboperations", 0) or 0),
        int(final.get("NumberOfFailedSuboperations", 0) or 0),
        int(final.get("NumberOfWarningSuboperations", 0) or 0),
    )


def move(
    ae_title: str, node: NodeRow, identifier: Dataset, destination: str, model: str = "study"
) -> RetrieveOutcome:
    sop = MOVE_MODELS[model]
    ae = make_ae(ae_title)
    assoc = associate(ae, node, [build_context(sop)])
    try:
        return _outcome(assoc.send_c_move(identifier, destination, sop))
    finally:
        if assoc.is_established:
            assoc.release()


def get(
    ae_title: str,
    node: NodeRow,
    identifier: Dataset,
    on_instance: Callable[[Any], int],
    model: str = "study",
    sop_classes: Sequence[str] = STORAGE_SOP_CLASSES[: MAX_CONTEXTS - 1],
) -> RetrieveOutcome:
    """C-GET; ``on_instance(event)`` handles each received C-STORE and returns its status.

    Proposes the storage classes with the uncompressed syntaxes, so compressed instances
    come back decoded.
    """
    sop = GET_MODELS[model]
    ae = make_ae(ae_title)
    contexts = [build_context(sop)]
    contexts += [build_context(uid, list(UNCOMPRESSED)) for uid in sop_classes]
    roles = [build_role(uid, scp_role=True) for uid in sop_classes]
    assoc = associate(
        ae,
        node,
        contexts[:MAX_CONTEXTS],
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_instance)],
    )
    try:
        return _outcome(assoc.send_c_get(identifier, sop))
    finally:
        if assoc.is_established:
            assoc.release()
