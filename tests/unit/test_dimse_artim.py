"""The listener's own ARTIM bookkeeping (issue 11): unassociated sockets bounded in number (the
oldest goes) and in age; association slots given back even by a thread that ended unseen."""

from __future__ import annotations

import socket
import threading
import time

from solent.protocols.dimse.artim import AssociationSlots, PendingConnections


def test_oldest_pending_connection_is_dropped_beyond_the_limit() -> None:
    pending = PendingConnections(limit=2, artim_seconds=60)
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        for server_side, _ in pairs:
            pending.admit(server_side, "peer")
        assert len(pending) == 2 and pending.dropped == 1
        pairs[0][1].settimeout(2)
        assert pairs[0][1].recv(1) == b""  # the oldest was shut down
        pending.associated(pairs[1][0])  # its A-ASSOCIATE-RQ arrived: no longer pending
        assert len(pending) == 1
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_artim_closes_connections_that_never_associate() -> None:
    pending = PendingConnections(limit=10, artim_seconds=0.2)
    server_side, client_side = socket.socketpair()
    try:
        pending.admit(server_side, "peer")
        assert pending.reap() == 0  # not yet expired
        time.sleep(0.25)
        assert pending.reap() == 1 and len(pending) == 0
        client_side.settimeout(2)
        assert client_side.recv(1) == b""
    finally:
        server_side.close()
        client_side.close()


def test_slots_are_bounded_and_dead_threads_give_theirs_back() -> None:
    slots = AssociationSlots(limit=2)
    done = threading.Event()
    threads = [threading.Thread(target=done.wait) for _ in range(3)]
    for t in threads[:2]:
        t.start()
    assert slots.take(threads[0]) and slots.take(threads[1])
    assert not slots.take(threads[2])
    done.set()
    for t in threads[:2]:
        t.join()
    assert slots.take(threads[2])  # both holders ended without a release
    slots.release(threads[2])
    assert len(slots) == 0
