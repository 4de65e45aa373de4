"""Whether a connecting address belongs to any registered peer: the first check of a listener,
made before a byte is read, so an unregistered host costs one accept and one close.

The full check (which sender, which trust) still happens per message; this one only needs the
addresses, read at most every ``cache_seconds`` so a connection flood never hits the index.
"""

from __future__ import annotations

from solent.index.hl7_senders import list_senders
from solent.index.sql import Index
from solent.security.addresses import host_matches
from solent.ttl_cache import TtlCache


class PeerAddresses:
    def __init__(self, index: Index, *, cache_seconds: float = 5.0) -> None:
        self._index = index
        self._hosts: TtlCache[tuple[str, ...]] = TtlCache(cache_seconds, limit=4)

    def _hl7_hosts(self) -> tuple[str, ...]:
        return tuple(sorted({h for row in list_senders(self._index) for h in row.hosts}))

    def hl7_sender_address(self, address: str) -> bool:
        """True when some registered HL7 sender may call from ``address``."""
        hosts = self._hosts.get("hl7", self._hl7_hosts)
        return any(host_matches(h, address) for h in hosts)
