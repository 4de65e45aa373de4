"""Shared fixtures. A missing peer skips its tests locally and fails them in CI
(SOLENT_REQUIRE_PEERS=1), so a green CI always means the real peer was exercised."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from solent.app import Archive, build_archive
from solent.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
REQUIRE_PEERS = os.environ.get("SOLENT_REQUIRE_PEERS") == "1"


def require(available: bool, what: str) -> None:
    """Skip (locally) or fail (CI) when a real peer or shared data is missing."""
    if available:
        return
    if REQUIRE_PEERS:
        pytest.fail(f"required peer missing in CI: {what}")
    pytest.skip(f"{what} not available (CI sets SOLENT_REQUIRE_PEERS=1 and installs it)")


def shared_dir() -> Path:
    return Path(os.environ.get("SOLENT_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    d = shared_dir() / "dicom-corpus"
    require((d / "MANIFEST.tsv").is_file(), f"the shared DICOM corpus at {d}")
    return d


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"the `{name}` program")
    assert path is not None
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(environ={}, data_dir=tmp_path / "var")


@pytest.fixture
def archive(settings: Settings) -> Iterator[Archive]:
    a = build_archive(settings)
    a.index.add_trust("ZZA", "Trust A")
    a.index.add_trust("ZZB", "Trust B")
    yield a
    a.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("SOLENT_TEST_POSTGRES_URL", "")
    require(bool(url), "PostgreSQL (set SOLENT_TEST_POSTGRES_URL)")
    return url
