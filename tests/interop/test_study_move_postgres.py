"""R57 on PostgreSQL: a study moved between two trusts' records (request, second person's
approval) changes who may see it at once through the kept visibility rows (migration 0009's
triggers), instances that still name the old record follow it while and after it moves, and
moving it back restores both."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from solent.app import build_archive
from solent.demo import load_demo
from solent.domain.principal import SYSTEM
from solent.protocols.http import create_app
from solent.services.check import check_archive
from solent.settings import load_settings
from tests.unit.security_fixtures import add_user
from tests.unit.stow_support import ct_instance, stow_body

pytestmark = pytest.mark.interop


def _sees(client: TestClient, heads: dict[str, str], study: str) -> bool:
    r = client.get(f"/dicomweb/studies/{study}/metadata", headers=heads)
    assert r.status_code in (200, 404), r.text
    return r.status_code == 200


def test_a_cross_trust_move_changes_who_sees_the_study_and_late_images_follow(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    settings = load_settings(environ={}, data_dir=tmp_path / "var", database_url=fresh_postgres_url)
    archive = build_archive(settings)
    try:
        load_demo(archive)
        study = archive.query.list_studies(SYSTEM, issuer="ZZB", local_id="B7730444")[0]
        uid = str(study["study_uid"])
        with TestClient(create_app(archive), raise_server_exceptions=False) as client:
            asker = add_user(archive, "adminzb", "ZZB", "pacs_admin")
            approver = add_user(archive, "adminzc", "ZZC", "pacs_admin")
            carol_zd = add_user(archive, "drzd", "ZZD", "clinician")
            sender = add_user(archive, "modzb", "ZZB", "integration")
            # Carol's ZZC record is linked to her ZZD record (same traced NHS number).
            assert not _sees(client, carol_zd, uid)

            body = {"to": {"issuer": "ZZC", "patient_id": "C-55501"}, "reason": "Carol's"}
            asked = client.post(f"/api/identity/studies/{uid}/move", json=body, headers=asker)
            assert asked.status_code == 200 and asked.json()["status"] == "requested", asked.text
            edit = asked.json()["id"]
            assert not _sees(client, carol_zd, uid)

            codes: list[int] = []

            def send() -> None:
                part = ct_instance("B7730444", "ZZB", uid, name="DEMO^BOB")
                body, content_type = stow_body(part)
                r = client.post(
                    "/dicomweb/studies", content=body, headers={**sender, **content_type}
                )
                codes.append(r.status_code)

            threads = [threading.Thread(target=send) for _ in range(4)]
            for th in threads:
                th.start()
            approved = client.post(f"/api/identity/study-edits/{edit}/approve", headers=approver)
            for th in threads:
                th.join()
            assert approved.status_code == 200, approved.text
            send()  # after the move
            assert codes == [200] * 5

            # The kept visibility rows (triggers) agree with the rule after the move.
            drift = check_archive(archive.index, archive.store).visibility_drift
            assert drift and not any(drift.values()), drift
            # Carol's ZZD clinician sees it now (through her linked record), under Carol.
            assert _sees(client, carol_zd, uid)
            docs = client.get(f"/dicomweb/studies/{uid}/metadata", headers=carol_zd).json()
            assert len(docs) == int(study["num_instances"]) + 5
            ids = {d["00100020"]["Value"][0] for d in docs}
            assert "B7730444" not in ids

            back = client.post(
                f"/api/identity/study-edits/{edit}/reverse",
                json={"reason": "Bob's after all"},
                headers=approver,
            )
            assert back.status_code == 200 and back.json()["status"] == "requested", back.text
            done = client.post(
                f"/api/identity/study-edits/{back.json()['id']}/approve", headers=asker
            )
            assert done.status_code == 200, done.text
            assert not _sees(client, carol_zd, uid)
            drift = check_archive(archive.index, archive.store).visibility_drift
            assert drift and not any(drift.values()), drift
    finally:
        archive.close()
