"""Helpers shared by the security tests: users, tokens and an enforcing in-process app."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from solent.app import Archive, build_archive
from solent.demo import load_demo
from solent.domain.principal import SYSTEM
from solent.protocols.http import create_app
from solent.security.users import UserService
from solent.settings import load_settings

PASSWORD = "correct horse battery staple"


def users(archive: Archive) -> UserService:
    return archive.services.users


def add_user(archive: Archive, name: str, trust: str, *roles: str, **kw: Any) -> dict[str, str]:
    """Create a user and return the headers of a fresh bearer token for them."""
    svc = users(archive)
    svc.add(SYSTEM, name, trust, roles, kw.get("password", PASSWORD), kw.get("other", ()))
    return {"Authorization": "Bearer " + svc.issue(name, SYSTEM).token}


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo data loaded once; each test gets its own copy."""
    data = tmp_path_factory.mktemp("demo") / "var"
    archive = build_archive(load_settings(environ={}, data_dir=data))
    load_demo(archive)
    archive.close()
    return data


@pytest.fixture
def demo(demo_template: Path, tmp_path: Path) -> Iterator[Archive]:
    """The synthetic demo data (four trusts; Alice at ZZA and ZZB, Bob at ZZB only)."""
    data = tmp_path / "demo-var"
    shutil.copytree(demo_template, data)
    archive = build_archive(load_settings(environ={}, data_dir=data))
    yield archive
    archive.close()


@pytest.fixture
def demo_client(demo: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(demo), raise_server_exceptions=False) as c:
        yield c


def study_of(archive: Archive, issuer: str, local_id: str) -> str:
    rows = archive.query.list_studies(SYSTEM, issuer=issuer, local_id=local_id)
    assert rows, f"no study for {local_id}@{issuer}"
    return str(rows[0]["study_uid"])


def cli_env(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    """Point an in-process `solent` CLI at ``data_dir``, without the test run's own SOLENT_*
    variables (SOLENT_TEST_POSTGRES_URL...), which the CLI would refuse as unknown settings."""
    import os

    for key in [k for k in os.environ if k.startswith("SOLENT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SOLENT_DATA_DIR", str(data_dir))
