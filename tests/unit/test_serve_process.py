"""The one launcher of `solent serve` children (tests and benchmarks): ready line, ports, stop."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from solent.serve_process import ServeStartError, serve_env, start_serve, stop_serve


def test_started_server_reports_its_ports_and_stops_cleanly(tmp_path: Path) -> None:
    log = (tmp_path / "serve.log").open("w", encoding="utf-8")
    proc, ports = start_serve(serve_env(tmp_path / "var"), timeout=120, log=log)
    try:
        assert ports["http"] > 0 and ports["dicom"] > 0
        r = httpx.get(f"http://127.0.0.1:{ports['http']}/health", timeout=30)
        assert r.status_code == 200
    finally:
        assert stop_serve(proc) == 0
        log.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", ports["http"]), timeout=1)


def test_a_server_that_cannot_start_raises_with_its_output(tmp_path: Path) -> None:
    env = serve_env(tmp_path / "var", {"SOLENT_HTTP_PORT": "not-a-port"})
    with pytest.raises(ServeStartError, match="did not start"):
        start_serve(env, timeout=60)


def test_environment_drops_outside_solent_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOLENT_DATABASE_URL", "postgresql://elsewhere/db")
    env = serve_env(tmp_path, {"SOLENT_LOG_LEVEL": "WARNING"})
    assert "SOLENT_DATABASE_URL" not in env
    assert env["SOLENT_DATA_DIR"] == str(tmp_path) and env["SOLENT_HTTP_PORT"] == "0"
    assert env["SOLENT_BIND_ADDRESS"] == "127.0.0.1" and env["SOLENT_LOG_LEVEL"] == "WARNING"
