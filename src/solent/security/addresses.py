"""Whether a calling peer's address is the one a node was registered with (DIMSE nodes and HL7
senders alike): "who may talk" is decided by the same rule on every listener."""

from __future__ import annotations

import ipaddress
import socket
import time
from functools import lru_cache


@lru_cache(maxsize=256)
def _resolve(host: str, _epoch: int) -> frozenset[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return frozenset()
    return frozenset(str(ipaddress.ip_address(str(i[4][0]).split("%")[0])) for i in infos)


def _normalise(address: str) -> str:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


def host_matches(registered_host: str, peer_address: str) -> bool:
    """True when the registered host name or IP resolves to the peer's address.

    Host names are resolved at most once a minute; "*" accepts any address (for nodes behind
    NAT pools, to be registered knowingly).
    """
    if registered_host == "*":
        return True
    try:
        peer = _normalise(peer_address)
    except ValueError:
        return False
    try:
        return _normalise(registered_host) == peer
    except ValueError:
        pass
    return peer in _resolve(registered_host.lower(), int(time.monotonic() // 60))
