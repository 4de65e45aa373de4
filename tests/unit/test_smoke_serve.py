import signal
from pathlib import Path

import httpx

from solent.serve_process import serve_env, start_serve
from tests.conftest import RunningServer


def test_serve_answers_health_and_stops_on_sigterm(server: RunningServer) -> None:
    r = httpx.get(server.base_url + "/health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert server.stop() == 0


def test_sigterm_right_after_ready_still_stops_cleanly(tmp_path: Path) -> None:
    """A supervisor may stop the server the moment it reports ready: status 0, no worker
    process left behind."""
    proc, _ports = start_serve(serve_env(tmp_path / "var"))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
