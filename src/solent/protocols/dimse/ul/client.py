"""The requesting side of the fast upper layer: the sub-association a C-MOVE sends its C-STORE
sub-operations on (PS3.4 C.4.2), so they stream from storage like C-GET's.

Hand-written for the same reason as the acceptor (pdu.py): pynetdicom's send path reads a
whole dataset into memory and builds one object per PDV. Only what a storage SCU needs is
here: A-ASSOCIATE-RQ with our contexts and maximum PDU length, the A-ASSOCIATE-AC's results
and the peer's maximum length, and an orderly A-RELEASE; anything else the peer sends while
we wait ends the sub-association with A-ABORT.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from solent.protocols.dimse.ul import pdu
from solent.protocols.dimse.ul.association import Context, Negotiated
from solent.protocols.dimse.ul.pdu import PduError, items
from solent.protocols.dimse.ul.server import Association, Config, Services, recv_exact


class AssociationRefused(Exception):
    """The destination rejected, aborted or never answered the A-ASSOCIATE-RQ."""


def associate_rq(
    calling_ae: str,
    called_ae: str,
    proposed: Sequence[tuple[str, Sequence[str]]],
    *,
    max_pdu_length: int,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    """An A-ASSOCIATE-RQ proposing ``proposed`` (abstract syntax, transfer syntaxes) as the
    odd context IDs 1, 3, 5, ... (PS3.8 9.3.2.2)."""
    parts = [
        pdu.U16.pack(1),
        b"\x00\x00",
        pdu._ae(called_ae),
        pdu._ae(calling_ae),
        bytes(32),
        pdu._item(0x10, pdu.APPLICATION_CONTEXT.encode()),
    ]
    for n, (abstract, syntaxes) in enumerate(proposed):
        sub = pdu._item(0x30, abstract.encode()) + b"".join(
            pdu._item(0x40, ts.encode()) for ts in syntaxes
        )
        parts.append(pdu._item(0x20, bytes((2 * n + 1, 0, 0, 0)) + sub))
    user = [
        pdu._item(0x51, pdu.U32.pack(max_pdu_length)),
        pdu._item(0x52, implementation_class_uid.encode()),
    ]
    if implementation_version_name:
        user.append(pdu._item(0x55, implementation_version_name.encode()[:16]))
    parts.append(pdu._item(0x50, b"".join(user)))
    return pdu.pdu(pdu.ASSOCIATE_RQ, b"".join(parts))


def parse_associate_ac(
    body: bytes | memoryview, proposed: Sequence[tuple[str, Sequence[str]]]
) -> tuple[dict[int, Context], int]:
    """The contexts the destination accepted (for us to send C-STOREs on) and its maximum
    PDU length, from an A-ASSOCIATE-AC body; PduError when it breaks PS3.8."""
    view = memoryview(body)
    if len(view) < 68:
        raise PduError("A-ASSOCIATE-AC shorter than its fixed fields")
    contexts: dict[int, Context] = {}
    max_pdu = 0
    for kind, value in items(view, 68, len(view)):
        if kind == 0x21:
            if len(value) < 4:
                raise PduError("presentation context item too short")
            context_id, result = value[0], value[2]
            index = (context_id - 1) // 2
            if context_id % 2 == 0 or not 0 <= index < len(proposed):
                raise PduError(f"A-ASSOCIATE-AC answers context {context_id}, never proposed")
            chosen = [pdu._uid(sub) for k, sub in items(value, 4, len(value)) if k == 0x40]
            abstract, offered = proposed[index]
            if result == 0:
                if len(chosen) != 1 or chosen[0] not in offered:
                    raise PduError("accepted context with a transfer syntax never proposed")
                contexts[context_id] = Context(context_id, abstract, chosen[0], True)
        elif kind == 0x50:
            for sub_kind, sub in items(value, 0, len(value)):
                if sub_kind == 0x51:
                    if len(sub) != 4:
                        raise PduError("maximum length sub-item is not 4 bytes")
                    max_pdu = pdu.U32.unpack_from(sub)[0]
    return contexts, max_pdu


def open_association(
    host: str,
    port: int,
    *,
    calling_ae: str,
    called_ae: str,
    proposed: Sequence[tuple[str, Sequence[str]]],
    config: Config,
    services: Services,
    workers: ThreadPoolExecutor,
) -> Association:
    """Connect and associate; the Association sends on the accepted contexts (window 1)."""
    try:
        sock = socket.create_connection((host, port), timeout=config.artim_timeout)
    except OSError as exc:
        raise AssociationRefused(f"cannot connect to {called_ae}: {exc}") from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(
            associate_rq(
                calling_ae,
                called_ae,
                proposed,
                max_pdu_length=config.max_pdu_length,
                implementation_class_uid=config.implementation_class_uid,
                implementation_version_name=config.implementation_version_name,
            )
        )
        header = bytearray(6)
        recv_exact(sock, memoryview(header))
        kind, length = pdu.HEADER.unpack_from(header)
        if length > pdu.MAX_ASSOCIATE_RQ:
            raise PduError("A-ASSOCIATE answer longer than 1 MB")
        body = bytearray(length)
        recv_exact(sock, memoryview(body))
        if kind == pdu.ASSOCIATE_RJ:
            raise AssociationRefused(f"{called_ae} rejected the association")
        if kind != pdu.ASSOCIATE_AC:
            raise AssociationRefused(f"{called_ae} answered PDU type 0x{kind:02X}")
        contexts, peer_max = parse_associate_ac(memoryview(body), proposed)
    except AssociationRefused:
        sock.close()
        raise
    except Exception as exc:  # PduError, OSError, a timeout: no association
        with contextlib.suppress(OSError):
            sock.sendall(pdu.abort(pdu.ABORT_SERVICE_USER))
        sock.close()
        raise AssociationRefused(f"association with {called_ae} failed: {exc}") from exc
    sock.settimeout(config.network_timeout)
    negotiated = Negotiated(contexts, peer_max, 1, b"")
    return Association(sock, negotiated, None, services, config, workers)


def release(assoc: Association, timeout: float) -> None:
    """A-RELEASE-RQ, then wait (at most ``timeout``) for the A-RELEASE-RP; always closes."""
    sock = assoc.sock
    try:
        assoc.send(pdu.RELEASE_RQ_PDU)
        sock.settimeout(timeout)
        header = bytearray(6)
        while True:
            recv_exact(sock, memoryview(header))
            kind, length = pdu.HEADER.unpack_from(header)
            if length > assoc.config.max_pdu_length:
                break
            recv_exact(sock, memoryview(bytearray(length)))
            if kind in (pdu.RELEASE_RP, pdu.ABORT):
                break
            # a late P-DATA (a response to nothing outstanding) is read and dropped
    except Exception:  # the sub-association ends either way
        with contextlib.suppress(OSError):
            sock.sendall(pdu.abort(pdu.ABORT_SERVICE_USER))
    finally:
        sock.close()
