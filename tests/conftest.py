"""Shared fixtures. A missing peer skips its tests locally and fails them in CI
(SOLENT_REQUIRE_PEERS=1), so a green CI always means the real peer was exercised."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def http_headers(archive: Archive) -> dict[str, str]:
    """Headers an authorised test client sends to an in-process app built on ``archive``.

    The security issue turns this into a real bearer token; every HTTP test goes through it.
    """
    return {}


@dataclass
class RunningServer:
    proc: subprocess.Popen[str]
    ports: dict[str, Any]
    data_dir: Path
    env: dict[str, str]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def headers(self) -> dict[str, str]:
        """Headers an authorised client of this server sends (see http_headers)."""
        return {}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SOLENT), *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=300,
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


SOLENT = Path(sys.executable).parent / "solent"


def start_server(
    data_dir: Path, extra_env: dict[str, str] | None = None, timeout: float = 60
) -> RunningServer:
    """Start `solent serve` with every port 0 and wait for its SOLENT_READY line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    env.update(
        SOLENT_DATA_DIR=str(data_dir),
        SOLENT_HTTP_PORT="0",
        SOLENT_DICOM_PORT="0",
        SOLENT_HL7_PORT="0",
        SOLENT_BIND_ADDRESS="127.0.0.1",
    )
    env.update(extra_env or {})
    proc = subprocess.Popen(
        [str(SOLENT), "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith("SOLENT_READY "):
            ports = json.loads(line.split(" ", 1)[1])
            # Keep draining output so the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            return RunningServer(proc, ports, data_dir, env)
    proc.kill()
    raise AssertionError("solent serve did not start:\n" + "".join(seen[-40:]))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A `solent serve` process on a fresh embedded archive with trusts ZZA and ZZB."""
    data = tmp_path / "srv"
    env = {"SOLENT_DATA_DIR": str(data)}
    base = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    for code in ("ZZA", "ZZB"):
        subprocess.run(
            [str(SOLENT), "trust", "add", code, "--name", f"Trust {code}"],
            env={**base, **env},
            check=True,
            capture_output=True,
        )
    srv = start_server(data)
    yield srv
    srv.stop()
