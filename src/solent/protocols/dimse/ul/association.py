"""A-ASSOCIATE negotiation (PS3.7 Annex D, PS3.8 9.3.2-9.3.3) for the fast path.

Hand-written alongside pdu.py: the decisions are few (one transfer syntax per context, max PDU
length both ways, asynchronous operations window, SCP/SCU role selection) and making them
from the parsed request costs microseconds, where pynetdicom deep-copies ~170 x ~45 context
objects per association. Extended negotiation (SOP class and common) is not supported and so,
as PS3.7 D.3.3.5-6 allow, not answered; user identity is not answered either (access is by
registered AE title, address and TLS certificate).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from solent.protocols.dimse.ul import pdu
from solent.protocols.dimse.ul.pdu import AcceptedContext, AssociateRequest, RoleSelection

ACCEPT, USER_REJECTION, ABSTRACT_NOT_SUPPORTED, TRANSFER_NOT_SUPPORTED = 0, 1, 3, 4
# A-ASSOCIATE-RJ (PS3.8 9.3.4)
RJ_PERMANENT, RJ_TRANSIENT = 1, 2
RJ_SOURCE_USER, RJ_SOURCE_ACSE, RJ_SOURCE_PRESENTATION = 1, 2, 3
RJ_APP_CONTEXT, RJ_CALLING_AE, RJ_CALLED_AE = 2, 3, 7
RJ_PROTOCOL_VERSION, RJ_LOCAL_LIMIT = 2, 2
BIG_ENDIAN = "1.2.840.10008.1.2.2"


@dataclass(frozen=True, slots=True)
class Context:
    """An accepted presentation context; ``peer_scp``: the peer may be sent C-STOREs on it."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    peer_scp: bool


@dataclass(frozen=True, slots=True)
class Policy:
    """What this AE accepts. ``syntaxes`` gives an abstract syntax's transfer syntaxes (None
    when the abstract syntax is not offered to this peer)."""

    max_pdu_length: int
    implementation_class_uid: str
    implementation_version_name: str
    syntaxes: Callable[[str], Collection[str] | None]
    max_operations: int = 8


@dataclass(slots=True)
class Negotiated:
    contexts: dict[int, Context]
    peer_max_pdu: int  # 0: unlimited
    window: int  # operations the peer may have outstanding with us
    ac: bytes  # the A-ASSOCIATE-AC to send


class Rejected(Exception):
    def __init__(self, result: int, source: int, reason: int, why: str) -> None:
        super().__init__(why)
        self.pdu = pdu.associate_rj(result, source, reason)


def negotiate(rq: AssociateRequest, policy: Policy) -> Negotiated:
    """The answer to ``rq``: accepted contexts and the AC, or :class:`Rejected`."""
    if not rq.protocol_version & 1:
        raise Rejected(RJ_PERMANENT, RJ_SOURCE_ACSE, RJ_PROTOCOL_VERSION, "protocol version")
    if rq.application_context != pdu.APPLICATION_CONTEXT:
        raise Rejected(RJ_PERMANENT, RJ_SOURCE_USER, RJ_APP_CONTEXT, "application context")
    results: list[AcceptedContext] = []
    contexts: dict[int, Context] = {}
    roles: dict[str, RoleSelection] = {}
    for cx in rq.contexts:
        offered = policy.syntaxes(cx.abstract_syntax) if cx.context_id % 2 else None
        if offered is None:
            results.append(AcceptedContext(cx.context_id, ABSTRACT_NOT_SUPPORTED, ""))
            continue
        chosen = next((ts for ts in cx.transfer_syntaxes if ts in offered), None)
        if chosen is None:
            results.append(AcceptedContext(cx.context_id, TRANSFER_NOT_SUPPORTED, ""))
            continue
        role = rq.roles.get(cx.abstract_syntax)
        if role is not None:
            roles[cx.abstract_syntax] = role  # both roles are supported: accept as proposed
        peer_scp = role is not None and role.scp
        if peer_scp and chosen == BIG_ENDIAN:
            # C-GET sub-operations go out on this context: big endian (retired) can be sent
            # only for an instance stored in it, so any other syntax the peer proposed is
            # taken (getscu +xb had every instance stored otherwise failed, A702).
            chosen = next(
                (ts for ts in cx.transfer_syntaxes if ts in offered and ts != BIG_ENDIAN), chosen
            )
        results.append(AcceptedContext(cx.context_id, ACCEPT, chosen))
        contexts[cx.context_id] = Context(cx.context_id, cx.abstract_syntax, chosen, peer_scp)
    window = 1
    reply_window = None
    if rq.async_window is not None:
        invoked = rq.async_window[0] or policy.max_operations
        window = min(invoked, policy.max_operations)
        reply_window = (window, 1)  # we invoke sub-operations one at a time
    ac = pdu.associate_ac(
        rq,
        results,
        max_pdu_length=policy.max_pdu_length,
        implementation_class_uid=policy.implementation_class_uid,
        implementation_version_name=policy.implementation_version_name,
        async_window=reply_window,
        roles=roles,
    )
    return Negotiated(contexts, rq.max_pdu_length, window, ac)
