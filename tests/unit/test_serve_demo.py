"""`solent serve` with SOLENT_DEMO_DATA=true: what a newcomer sees after `make run`."""

from __future__ import annotations

from pathlib import Path

import httpx

from solent.demo import ALICE, STUDIES, TRUSTS
from tests.conftest import start_server


def test_demo_data_is_loaded_once_and_queryable(tmp_path: Path) -> None:
    data = tmp_path / "var"
    srv = start_server(data, {"SOLENT_DEMO_DATA": "true"}, timeout=300)
    try:
        assert {"http", "dicom", "hl7"} <= set(srv.ports)
        ports = {k: v for k, v in srv.ports.items() if k != "ae_title"}
        assert all(isinstance(p, int) and p > 0 for p in ports.values()), srv.ports
        assert srv.ports["ae_title"] == "SOLENT"
        h = srv.headers()
        with httpx.Client(base_url=srv.base_url, headers=h, timeout=30) as http:
            health = http.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "ok"

            stats = http.get("/api/stats").json()
            expected_instances = sum(n for *_, n in STUDIES)
            assert stats["instances"] == expected_instances
            assert stats["studies"] == len(STUDIES) and stats["patients"] > 0

            trusts = {t["code"] for t in http.get("/api/trusts").json()}
            assert set(TRUSTS) <= trusts

            # Alice has the same verified NHS number at ZZA and ZZB: one query finds both.
            studies = http.get("/api/studies", params={"nhs_number": ALICE}).json()
            assert {s["trust_code"] for s in studies} == {"ZZA", "ZZB"}
            assert all(s["nhs_number"] == ALICE for s in studies)
            assert {m for s in studies for m in s["modalities"].split("\\")} >= {"CT", "MR"}

            metrics = http.get("/metrics")
            assert metrics.status_code == 200
            assert "solent_ingest_instances_total" in metrics.text
        assert srv.stop() == 0, "SIGTERM stops the server cleanly"
    finally:
        srv.stop()

    again = start_server(data, {"SOLENT_DEMO_DATA": "true"}, timeout=300)
    try:
        stats2 = httpx.get(again.base_url + "/api/stats", headers=again.headers(), timeout=30)
        assert stats2.json() == stats, "the second start does not load the demo again"
        assert again.stop() == 0
    finally:
        again.stop()
