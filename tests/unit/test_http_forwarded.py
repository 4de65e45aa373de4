"""Whose address an HTTP request comes from, as `solent serve` runs the app (issue 16: nodes
behind a balancer). The audit trail and the per-address login limit use it.

uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise, so a node with a proxy
or balancer on its own host (which passes the header on as the client sent it) recorded
whatever address a client claimed, and a password guesser changed its claimed address at
every try. Now the address is the TCP peer, as documented, unless the operator names the
balancers whose X-Forwarded-For is believed (SOLENT_HTTP_FORWARDED_FROM).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from solent.app import Archive, build_archive
from solent.serve import http_config
from solent.settings import load_settings

CLAIMED = "203.0.113.9"


@pytest.fixture
def node(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Archive]:
    overrides: dict[str, Any] = getattr(request, "param", {})
    archive = build_archive(load_settings(environ={}, data_dir=tmp_path / "var", **overrides))
    yield archive
    archive.close()


def _failed_login_address(archive: Archive, peer: str) -> str:
    config = http_config(archive, None, None)
    config.load()
    with TestClient(config.loaded_app, client=(peer, 40000)) as client:
        r = client.post(
            "/api/auth/token",
            auth=("nobody", "not the password at all"),
            headers={"X-Forwarded-For": CLAIMED},
        )
        assert r.status_code == 401
    (record,) = archive.audit.search(action="login-failed", limit=10)
    return str(record["actor_address"])


def test_a_client_cannot_choose_its_audited_address(node: Archive) -> None:
    assert _failed_login_address(node, "127.0.0.1") == "127.0.0.1"


@pytest.mark.parametrize("node", [{"http_forwarded_from": "127.0.0.1"}], indirect=True)
def test_a_named_balancer_says_whose_request_it_forwards(node: Archive) -> None:
    assert _failed_login_address(node, "127.0.0.1") == CLAIMED


@pytest.mark.parametrize("node", [{"http_forwarded_from": "10.0.0.5"}], indirect=True)
def test_anyone_else_forwarding_is_not_believed(node: Archive) -> None:
    assert _failed_login_address(node, "127.0.0.1") == "127.0.0.1"
