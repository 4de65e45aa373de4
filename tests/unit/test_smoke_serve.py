import httpx

from tests.conftest import RunningServer


def test_serve_answers_health_and_stops_on_sigterm(server: RunningServer) -> None:
    r = httpx.get(server.base_url + "/health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert server.stop() == 0
