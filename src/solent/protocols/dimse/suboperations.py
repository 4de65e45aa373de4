"""C-STORE sub-operations of C-MOVE / C-GET that send the stored bytes, not a re-encoding.

pynetdicom's Move/Get SCPs hand each yielded Dataset to ``assoc.send_c_store``, which would
re-encode it. The handlers yield a :class:`StoredInstance` placeholder instead and
:func:`send_c_store` (installed on every association Solent makes or serves) sends the stored
dataset bytes as they are when the peer accepted their transfer syntax, and a decoded Explicit
VR Little Endian dataset when it accepted only uncompressed ones.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.association import Association

from solent.domain.principal import Principal
from solent.domain.records import StoredInstanceRef
from solent.protocols.dimse.ul import dimse as ul_dimse
from solent.protocols.dimse.ul import pdu as ul_pdu
from solent.protocols.dimse.ul.get import LOSSLESS_TARGETS
from solent.services.outgoing_identity import CurrentIdentity
from solent.services.retrieve import OutgoingDataset, RetrieveService

log = logging.getLogger(__name__)
EXPLICIT_LE = UID("1.2.840.10008.1.2.1")


class StoredInstance(Dataset):
    """Placeholder for one stored instance in a Move/Get handler's yields."""

    def __init__(
        self,
        ref: StoredInstanceRef,
        service: RetrieveService,
        principal: Principal,
        identity: CurrentIdentity | None = None,
        failed: list[StoredInstanceRef] | None = None,
    ):
        super().__init__()
        self.SOPClassUID = ref.sop_class_uid
        self.SOPInstanceUID = ref.sop_instance_uid
        self._solent = (ref, service, principal)
        self._identity = identity
        self._failed = failed  # where a sub-operation that fails is noted, for the audit

    @property
    def solent_ref(self) -> tuple[StoredInstanceRef, RetrieveService, Principal]:
        return self._solent


def _context(assoc: Association, sop_class: str, ts: str, convert: bool) -> Any:
    """An accepted context where we may send ``sop_class`` in ``ts`` (or, with ``convert``,
    any uncompressed syntax pynetdicom converts to)."""
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax != sop_class or not cx.as_scu:
            continue
        accepted = cx.transfer_syntax[0]
        if accepted == ts or (convert and not UID(accepted).is_compressed):
            return cx
    return None


SEND_CHUNK = 64 << 10  # as the fast path (ul/server.py): what a sending association holds


def _stream_raw(
    assoc: Association,
    context: Any,
    ref: StoredInstanceRef,
    out: OutgoingDataset,
    msg_id: int,
    originator_aet: str | None,
    originator_id: int | None,
) -> Dataset:
    """Send one stored instance as P-DATA-TFs written straight to the association's socket
    in SEND_CHUNK slices of the stored file, then wait for the C-STORE-RSP through pynetdicom.

    Why around pynetdicom: its send path wants the whole dataset in memory (``getvalue``) and
    queues every fragment at once, so a 300 MB instance cost 600 MB (C-MOVE of the large
    instance test). While the association's reactor is paused nothing else is queued for this
    socket, and P-DATA-TF does not change the upper-layer state, so writing it here is what
    pynetdicom's DUL would have written, without holding the instance.
    """
    command = ul_dimse.encode(
        CommandField=ul_dimse.C_STORE_RQ,
        MessageID=msg_id,
        Priority=2,
        CommandDataSetType=0x0000,
        AffectedSOPClassUID=ref.sop_class_uid,
        AffectedSOPInstanceUID=ref.sop_instance_uid,
        MoveOriginatorApplicationEntityTitle=originator_aet or None,
        MoveOriginatorMessageID=originator_id,
    )
    limit = int(assoc.dimse.maximum_pdu_size or 0)
    step = min(limit - 6, SEND_CHUNK) if limit else SEND_CHUNK
    cid = int(context.context_id)
    sock: Any = assoc.dul.socket.socket  # type: ignore[union-attr]
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        for offset, size, last in ul_pdu.fragments(len(command), step + 6):
            chunk = command[offset : offset + size]
            sock.sendall(ul_pdu.p_data_header(size, cid, 1 | (2 if last else 0)) + chunk)
        total, sent, head = out.length, 0, memoryview(out.prefix)
        buf = bytearray(step)
        while True:
            view = memoryview(buf)
            n = min(len(head), step)
            view[:n] = head[:n]
            head = head[n:]
            want = min(step, total - sent)
            while n < want and out.rest is not None:
                got = out.rest.readinto(view[n:want])  # type: ignore[attr-defined]
                if not got:
                    raise OSError("the stored file is shorter than its size")
                n += got
            sent += n
            last = sent >= total
            sock.sendall(ul_pdu.p_data_header(n, cid, 2 if last else 0))
            sock.sendall(view[:n])
            if last:
                break
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if rsp is None:
        assoc._handle_no_response()
        return Dataset()
    return assoc._check_received_status(rsp)


def send_c_store(
    assoc: Association,
    dataset: Any,
    msg_id: int = 1,
    priority: int = 2,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> Dataset:
    if not isinstance(dataset, StoredInstance):
        return Association.send_c_store(
            assoc,
            dataset,
            msg_id=msg_id,
            priority=priority,
            originator_aet=originator_aet,
            originator_id=originator_id,
        )
    try:
        rsp = _send_stored(assoc, dataset, msg_id, priority, originator_aet, originator_id)
    except Exception:
        if dataset._failed is not None:
            dataset._failed.append(dataset.solent_ref[0])
        raise
    status = int(getattr(rsp, "Status", 0xC000))
    if dataset._failed is not None and status not in (0x0000, 0xB000, 0xB006, 0xB007):
        dataset._failed.append(dataset.solent_ref[0])
    return rsp


def _send_stored(
    assoc: Association,
    dataset: StoredInstance,
    msg_id: int,
    priority: int,
    originator_aet: str | None,
    originator_id: int | None,
) -> Dataset:
    ref, service, principal = dataset.solent_ref
    context = _context(assoc, ref.sop_class_uid, ref.transfer_syntax_uid, convert=False)
    if context is not None:
        out = service.open_encoded(principal, ref, dataset._identity)
        try:
            return _stream_raw(assoc, context, ref, out, msg_id, originator_aet, originator_id)
        finally:
            out.close()
    if _context(assoc, ref.sop_class_uid, EXPLICIT_LE, convert=True) is None:
        for target in LOSSLESS_TARGETS:  # as ul/get.py: re-encoded losslessly
            recoded = _context(assoc, ref.sop_class_uid, target, convert=False)
            if recoded is not None:
                data = service.transcoded_wire(principal, ref, dataset._identity, target)
                return _stream_raw(
                    assoc,
                    recoded,
                    ref,
                    OutgoingDataset(data, None, 0),
                    msg_id,
                    originator_aet,
                    originator_id,
                )
        raise ValueError(
            f"the peer accepted neither {ref.transfer_syntax_uid} nor an uncompressed syntax "
            f"for {ref.sop_class_uid}"
        )
    decoded = service.uncompressed(principal, ref, dataset._identity)
    return Association.send_c_store(
        assoc,
        decoded,
        msg_id=msg_id,
        priority=priority,
        originator_aet=originator_aet,
        originator_id=originator_id,
    )


def install(assoc: Association) -> Association:
    """Route this association's C-STOREs through :func:`send_c_store`."""
    assoc.send_c_store = functools.partial(send_c_store, assoc)  # type: ignore[method-assign]
    return assoc
