"""Limits on password logins: per source address, per user name, overall, and Argon2 at once.

A password check costs ~50 ms of one CPU by design (Argon2id), so a login flood is a way to
take a server down, and failures are the way to guess passwords. Per node and in memory (the
state need not survive a restart): failed logins from one address, failed logins for one name,
and all logins of the node are token buckets; Argon2 runs under a semaphore. Hand-written
because the buckets are ten lines and a rate-limit library would bring its own storage and
HTTP coupling; the login service decides, the HTTP adapter only maps the refusal to 429/503.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from solent.errors import SolentError
from solent.settings import Settings

#: A refused login is audited at most once per key and scope in this many seconds, so a flood
#: of refusals does not become a flood of audit writes.
AUDIT_EVERY_S = 60.0
#: How long a password check waits for an Argon2 slot before the login is refused as busy.
HASH_WAIT_S = 5.0
NAME_FAILURES = 5  # failed logins for one user name before it waits (one more per 5 s)
NAME_REFILL_S = 5.0


class LoginThrottled(SolentError):
    """Too many login attempts; ``scope`` is address, user or overall."""

    def __init__(self, scope: str, retry_after: float) -> None:
        self.scope = scope
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(
            {
                "address": "too many failed logins from this address",
                "user": "too many failed logins for this user",
                "overall": "too many logins on this server right now",
            }[scope]
            + f"; retry in {self.retry_after} s"
        )


class LoginBusy(SolentError):
    """Every Argon2 slot stayed busy for HASH_WAIT_S: the server is overloaded with logins."""

    retry_after = 5


class Buckets:
    """Token buckets by key: ``capacity`` tokens, refilled at ``rate`` per second."""

    def __init__(self, capacity: float, rate: float, limit: int = 100_000) -> None:
        self.capacity = float(capacity)
        self.rate = rate
        self.limit = limit
        self._state: dict[str, tuple[float, float]] = {}

    def _level(self, key: str, now: float) -> float:
        tokens, last = self._state.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - last) * self.rate)

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` has a token (0: it has one now)."""
        level = self._level(key, now)
        return 0.0 if level >= 1 else (1 - level) / self.rate

    def take(self, key: str, now: float) -> None:
        self._state[key] = (self._level(key, now) - 1, now)
        if len(self._state) > self.limit:  # forget idle keys rather than grow forever
            self._state = {k: v for k, v in self._state.items() if self._level(k, now) < 1}


class LoginLimits:
    def __init__(self, settings: Settings) -> None:
        per_address = settings.login_failures_per_address
        self.by_address = Buckets(per_address, per_address / settings.login_failure_window_seconds)
        self.by_name = Buckets(NAME_FAILURES, 1 / NAME_REFILL_S)
        rate = settings.login_attempts_per_second
        self.overall = Buckets(max(1.0, 2 * rate), rate)
        self._hashing = threading.BoundedSemaphore(settings.password_hash_concurrency)
        self._lock = threading.Lock()
        self._audited: dict[tuple[str, str], float] = {}

    def admit(self, name: str, address: str | None) -> None:
        """Raise LoginThrottled unless this attempt may check a password (counts overall)."""
        now = time.monotonic()
        with self._lock:
            for scope, buckets, key in (
                ("address", self.by_address, address or "?"),
                ("user", self.by_name, name),
            ):
                wait = buckets.wait(key, now)
                if wait > 0:
                    raise LoginThrottled(scope, wait)
            wait = self.overall.wait("*", now)
            if wait > 0:
                raise LoginThrottled("overall", wait)
            self.overall.take("*", now)

    def failed(self, name: str, address: str | None) -> None:
        now = time.monotonic()
        with self._lock:
            self.by_address.take(address or "?", now)
            self.by_name.take(name, now)

    def first_refusal(self, scope: str, key: str) -> bool:
        """Whether this refusal should be audited (the first of its key in AUDIT_EVERY_S)."""
        now = time.monotonic()
        with self._lock:
            last = self._audited.get((scope, key))
            if last is not None and now - last < AUDIT_EVERY_S:
                return False
            self._audited[(scope, key)] = now
            if len(self._audited) > 10_000:
                self._audited = {k: v for k, v in self._audited.items() if now - v < AUDIT_EVERY_S}
            return True

    @contextmanager
    def hashing(self) -> Iterator[None]:
        """One Argon2 slot, or LoginBusy after HASH_WAIT_S."""
        if not self._hashing.acquire(timeout=HASH_WAIT_S):
            raise LoginBusy("the server is busy checking passwords; retry in a few seconds")
        try:
            yield
        finally:
            self._hashing.release()
