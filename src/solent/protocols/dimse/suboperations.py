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
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from solent.domain.principal import Principal
from solent.domain.records import StoredInstanceRef
from solent.services.outgoing_identity import CurrentIdentity
from solent.services.retrieve import RetrieveService

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
    ):
        super().__init__()
        self.SOPClassUID = ref.sop_class_uid
        self.SOPInstanceUID = ref.sop_instance_uid
        self._solent = (ref, service, principal)
        self._identity = identity

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


def _send_raw(
    assoc: Association,
    context: Any,
    ref: StoredInstanceRef,
    data: bytes,
    msg_id: int,
    originator_aet: str | None,
    originator_id: int | None,
) -> Dataset:
    req = C_STORE()
    req.MessageID = msg_id
    req.Priority = 2
    req.AffectedSOPClassUID = ref.sop_class_uid
    req.AffectedSOPInstanceUID = ref.sop_instance_uid
    req.MoveOriginatorApplicationEntityTitle = originator_aet
    req.MoveOriginatorMessageID = originator_id
    req.DataSet = BytesIO(data)
    # As pynetdicom's own send_c_store: pause the acceptor reactor, send, wait for the answer.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, context.context_id)
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
    ref, service, principal = dataset.solent_ref
    context = _context(assoc, ref.sop_class_uid, ref.transfer_syntax_uid, convert=False)
    if context is not None:
        data = service.encoded_dataset(principal, ref, dataset._identity)
        return _send_raw(assoc, context, ref, data, msg_id, originator_aet, originator_id)
    if _context(assoc, ref.sop_class_uid, EXPLICIT_LE, convert=True) is None:
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
