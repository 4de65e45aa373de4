"""Login limits (issue 11, part 5): failed logins throttled per source address and overall with
a clear 429 + Retry-After and an audit record; Argon2 checks bounded in concurrency."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from solent.app import Archive, build_archive
from solent.domain.principal import SYSTEM
from solent.protocols.http import create_app
from solent.security import passwords, throttle
from solent.settings import load_settings
from tests.unit.security_fixtures import PASSWORD


@pytest.fixture
def limited(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Archive]:
    overrides: dict[str, Any] = getattr(request, "param", {})
    settings = load_settings(environ={}, data_dir=tmp_path / "var", **overrides)
    archive = build_archive(settings)
    archive.index.add_trust("ZZA", "Trust A")
    archive.services.users.add(SYSTEM, "drza", "ZZA", ("clinician",), PASSWORD)
    yield archive
    archive.close()


def _client(archive: Archive, address: str) -> TestClient:
    return TestClient(create_app(archive), raise_server_exceptions=False, client=(address, 40000))


@pytest.mark.parametrize("limited", [{"login_failures_per_address": 3}], indirect=True)
def test_an_address_guessing_passwords_waits_while_others_log_in(limited: Archive) -> None:
    with _client(limited, "10.0.0.66") as attacker, _client(limited, "10.0.0.7") as nurse:
        # Different names each time: the per-name limit is not what stops this.
        codes = [
            attacker.post("/api/auth/token", auth=(f"user{i}", "guess guess guess")).status_code
            for i in range(3)
        ]
        assert codes == [401, 401, 401]
        r = attacker.post("/api/auth/token", auth=("drza", PASSWORD))
        assert r.status_code == 429, r.text
        assert "from this address" in r.json()["detail"]
        retry = int(r.headers["retry-after"])
        assert 1 <= retry <= 300
        assert nurse.post("/api/auth/token", auth=("drza", PASSWORD)).status_code == 200
    refused = [
        r
        for r in limited.audit.search(action="login-failed", limit=100)
        if '"why":"throttled"' in (r["detail"] or "")
    ]
    assert len(refused) == 1
    assert (
        refused[0]["actor_address"] == "10.0.0.66" and '"scope":"address"' in refused[0]["detail"]
    )


@pytest.mark.parametrize("limited", [{"login_attempts_per_second": 0.1}], indirect=True)
def test_logins_are_limited_overall(limited: Archive) -> None:
    with _client(limited, "10.0.0.1") as a, _client(limited, "10.0.0.2") as b:
        assert a.post("/api/auth/token", auth=("drza", PASSWORD)).status_code == 200
        r = b.post("/api/auth/token", auth=("drza", PASSWORD))
        assert r.status_code == 429 and "on this server" in r.json()["detail"]
        assert int(r.headers["retry-after"]) >= 1


@pytest.mark.parametrize("limited", [{"password_hash_concurrency": 1}], indirect=True)
def test_argon2_checks_run_one_at_a_time(limited: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    active, most = 0, 0
    lock = threading.Lock()
    real = passwords.verify_password

    def counting(stored: str | None, password: str) -> bool:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        try:
            time.sleep(0.02)
            return real(stored, password)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(passwords, "verify_password", counting)
    monkeypatch.setattr(throttle, "HASH_WAIT_S", 120.0)  # queue, never refuse, on a busy machine
    users = limited.services.users
    results: list[object] = []
    threads = [
        threading.Thread(
            target=lambda i=i: results.append(users.login("drza", PASSWORD, f"10.0.1.{i}"))
        )
        for i in range(6)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert len(results) == 6 and all(r is not None for r in results)
    assert most == 1


@pytest.mark.parametrize("limited", [{"password_hash_concurrency": 1}], indirect=True)
def test_a_login_that_waits_too_long_for_argon2_is_refused_busy(
    limited: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(throttle, "HASH_WAIT_S", 0.2)
    users = limited.services.users
    with users.limits.hashing(), _client(limited, "10.0.0.9") as c:  # the only slot is taken
        r = c.post("/api/auth/token", auth=("drza", PASSWORD))
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
    with _client(limited, "10.0.0.9") as c:
        assert c.post("/api/auth/token", auth=("drza", PASSWORD)).status_code == 200
