"""Who may send HL7 v2 over MLLP (issue 6): registered senders only, like DIMSE nodes.

A sender is MSH-3 (sending application, or "*" for any application of the facility) plus MSH-4
(sending facility) calling from a registered address (`solent hl7 sender add`). Anything else is
refused with an AR ACK that says why, audited as a security alert, and not journalled: the
archive keeps nothing an unauthenticated peer sent. ``SOLENT_HL7_ALLOW_UNKNOWN_SENDERS`` opens
the gate for development (the MSH-4 trust check of the handler still applies).
"""

from __future__ import annotations

import logging

from solent.domain.principal import Principal, PrincipalKind
from solent.domain.records import SenderRow
from solent.protocols.hl7.er7 import Header, MessageRejected
from solent.security.addresses import host_matches
from solent.services.audit import AuditAction, AuditOutcome
from solent.services.audit_door import AuditDoor
from solent.services.directory import Directory
from solent.ttl_cache import TtlCache

log = logging.getLogger(__name__)

#: Registrations are read at most this often per sender, so a removal takes effect within it.
CACHE_S = 5.0


def peer_host(remote: str | None) -> str:
    """The address part of the listener's "host:port" (IPv6 hosts keep their colons)."""
    if not remote:
        return ""
    host, _, port = remote.rpartition(":")
    return host if host and port.isdigit() else remote


class SenderGate:
    def __init__(
        self, directory: Directory, audit: AuditDoor, *, allow_unknown: bool = False
    ) -> None:
        self.directory = directory
        self.allow_unknown = allow_unknown
        self.audit = audit
        self._senders: TtlCache[SenderRow | None] = TtlCache(CACHE_S, limit=1000)

    def _lookup(self, application: str, facility: str) -> SenderRow | None:
        return self._senders.get(
            (application, facility), lambda: self.directory.sender(application, facility)
        )

    def registration(self, header: Header) -> SenderRow | None:
        """The sender's registration, without the address check: for a message accepted
        (journalled) earlier and applied now, whose trust or regional role still counts."""
        return self._lookup(header.sending_application, header.sending_facility)

    def check(self, header: Header, remote: str | None) -> SenderRow | None:
        """The sender's registration; raises MessageRejected("AR", why) when it has none.

        None when the development switch lets an unregistered sender through.
        """
        app, facility = header.sending_application, header.sending_facility
        row = self._lookup(app, facility)
        host = peer_host(remote)
        if row is not None and any(host_matches(h, host) for h in row.hosts):
            return row
        if self.allow_unknown:
            return None
        if row is None:
            reason = (
                f"HL7 sender {app} at {facility} (MSH-3, MSH-4) is not registered; "
                "register it with `solent hl7 sender add`"
            )
        else:
            reason = f"HL7 sender {app} at {facility} is not registered to send from {host or '?'}"
        log.warning("HL7 message refused: %s", reason)
        try:
            self.audit.record(
                Principal(PrincipalKind.NODE, f"hl7:{app}^{facility}", None, address=host or None),
                AuditAction.PERMISSION_DENIED,
                AuditOutcome.DENIED,
                detail={
                    "channel": "hl7",
                    "reason": reason,
                    "message_type": header.message_type,
                    "control_id": header.control_id,
                },
            )
        except Exception:
            log.exception("could not audit a refused HL7 sender")
        raise MessageRejected("AR", reason)
