"""Publish/subscribe between the processes of one archive: live state across nodes (issue 16).

``publish(channel, payload)`` reaches every ``subscribe(channel, callback)`` of every node.
On PostgreSQL it is LISTEN/NOTIFY (no extra server; a notification is sent when the publishing
transaction commits, at most ~8000 bytes); on the embedded SQLite index, one process being all
there is, it is in-process. Uses: access caches dropped the moment access changes (the database
itself notifies ``ACCESS_CHANNEL`` from triggers, see migration 0005), MDT rooms' live events.

A subscriber whose listening connection was lost and re-made gets ``{"resync": true}``: what
was published meanwhile is gone, so it should reload (caches simply clear).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from solent.index.sql import PG_KEEPALIVE

log = logging.getLogger(__name__)

#: Notified by PostgreSQL triggers whenever users, tokens, break-glass grants, patient links,
#: registered senders/nodes or a patient's identity change (migration 0005).
ACCESS_CHANNEL = "solent_access_changed"
MAX_PAYLOAD = 7900  # PostgreSQL's NOTIFY limit is 8000 bytes
_CHANNEL = re.compile(r"[a-z][a-z0-9_]{0,62}")

Callback = Callable[[dict[str, Any]], None]


class Broadcast(Protocol):
    def publish(self, channel: str, payload: Mapping[str, Any]) -> None: ...

    def publish_in(self, conn: Any, channel: str, payload: Mapping[str, Any]) -> None:
        """Publish as part of ``conn``'s transaction (an index connection): sent when it
        commits, in commit order with other transactions; nothing if it rolls back."""

    def subscribe(self, channel: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback(payload)`` for each message on ``channel``; returns unsubscribe."""

    def close(self) -> None: ...


def _encode(channel: str, payload: Mapping[str, Any]) -> str:
    if not _CHANNEL.fullmatch(channel):
        raise ValueError(f"channel names are 1-63 of a-z, 0-9, _ (got {channel!r})")
    data = json.dumps(payload, separators=(",", ":"), sort_keys=True)
    if len(data.encode()) > MAX_PAYLOAD:
        raise ValueError(f"broadcast payload over {MAX_PAYLOAD} bytes: send a reference instead")
    return data


class _Subscribers:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_channel: dict[str, list[Callback]] = {}

    def add(self, channel: str, callback: Callback) -> Callable[[], None]:
        _encode(channel, {})
        with self._lock:
            self._by_channel.setdefault(channel, []).append(callback)

        def remove() -> None:
            with self._lock:
                callbacks = self._by_channel.get(channel, [])
                if callback in callbacks:
                    callbacks.remove(callback)

        return remove

    def channels(self) -> set[str]:
        with self._lock:
            return {c for c, cbs in self._by_channel.items() if cbs}

    def deliver(self, channel: str, payload: dict[str, Any]) -> None:
        with self._lock:
            callbacks = list(self._by_channel.get(channel, ()))
        for callback in callbacks:
            try:
                callback(payload)
            except Exception:
                log.exception("broadcast subscriber of %s failed", channel)


class LocalBroadcast:
    """One process: delivered at once, in the publisher's thread."""

    def __init__(self) -> None:
        self._subs = _Subscribers()

    def publish(self, channel: str, payload: Mapping[str, Any]) -> None:
        self._subs.deliver(channel, json.loads(_encode(channel, payload)))

    def publish_in(self, conn: Any, channel: str, payload: Mapping[str, Any]) -> None:
        self.publish(channel, payload)  # one process: delivered at once

    def subscribe(self, channel: str, callback: Callback) -> Callable[[], None]:
        return self._subs.add(channel, callback)

    def close(self) -> None:
        pass


class PostgresBroadcast:
    """LISTEN/NOTIFY on the index's PostgreSQL database; one listening thread per process,
    started by the first subscription, re-connecting (and sending ``resync``) after a loss."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self._subs = _Subscribers()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pub_lock = threading.Lock()
        self._pub_conn: Any = None
        self.listening = threading.Event()  # set while LISTENing on every subscribed channel

    def publish(self, channel: str, payload: Mapping[str, Any]) -> None:
        import psycopg

        data = _encode(channel, payload)
        with self._pub_lock:
            for attempt in (1, 2):
                try:
                    if self._pub_conn is None or self._pub_conn.closed:
                        self._pub_conn = psycopg.connect(self.url, autocommit=True, **PG_KEEPALIVE)
                    self._pub_conn.execute("SELECT pg_notify(%s, %s)", (channel, data))
                    return
                except psycopg.OperationalError:
                    self._pub_conn = None
                    if attempt == 2:
                        raise

    def publish_in(self, conn: Any, channel: str, payload: Mapping[str, Any]) -> None:
        from sqlalchemy import text

        conn.execute(
            text("SELECT pg_notify(:channel, :data)"),
            {"channel": channel, "data": _encode(channel, payload)},
        )

    def subscribe(self, channel: str, callback: Callback) -> Callable[[], None]:
        remove = self._subs.add(channel, callback)
        self.listening.clear()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="solent-broadcast", daemon=True)
            self._thread.start()
        return remove

    def _run(self) -> None:
        import psycopg
        from psycopg import sql

        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, **PG_KEEPALIVE) as conn:
                    listening: set[str] = set()
                    resync, first = not first, False
                    while not self._stop.is_set():
                        for channel in self._subs.channels() - listening:
                            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                            listening.add(channel)
                        if resync:
                            # Only once LISTENing again: what is published while subscribers
                            # reload arrives after the resync, never between the two.
                            resync = False
                            for channel in listening:
                                self._subs.deliver(channel, {"resync": True})
                        self.listening.set()
                        for note in conn.notifies(timeout=0.5):
                            try:
                                payload = json.loads(note.payload) if note.payload else {}
                            except ValueError:
                                payload = {"raw": note.payload}
                            self._subs.deliver(note.channel, payload)
            except psycopg.Error:
                self.listening.clear()
                log.warning("broadcast listener lost its connection; reconnecting", exc_info=True)
                self._stop.wait(1.0)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._pub_lock:
            if self._pub_conn is not None:
                self._pub_conn.close()
                self._pub_conn = None


def open_broadcast(database_url: str) -> Broadcast:
    if database_url.startswith("postgresql"):
        return PostgresBroadcast(database_url)
    return LocalBroadcast()
