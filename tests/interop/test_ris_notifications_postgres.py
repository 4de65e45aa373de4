"""R57 on PostgreSQL: the `ris` consumer's jobs in procrastinate's queue. A study moved through
the study edit service is told to the trust's RIS (a real MLLP listener); the RIS's AE fails
the job, procrastinate runs it again after its backoff, and the RIS gets the very same message
(MSH-10 included) and answers AA. Both sendings are audited."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest

from solent.app import Archive, build_archive
from solent.demo import load_demo
from solent.domain.principal import SYSTEM, Principal, PrincipalKind
from solent.domain.records import DestinationRow
from solent.services.identity import PatientKey
from solent.settings import load_settings
from tests.interop.test_ris_notifications import Ris
from tests.unit.security_fixtures import study_of

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]
ADMIN = Principal(PrincipalKind.USER, "adminzb", "ZZB", roles=frozenset({"pacs_admin"}))


@pytest.fixture
def archive(tmp_path: Path, fresh_postgres_url: str) -> Iterator[Archive]:
    env = {
        "SOLENT_DATABASE_URL": fresh_postgres_url,
        "SOLENT_JOBS_CONSUMERS": "ris",
        "SOLENT_JOBS_SETTLE_SECONDS": "0",
        "SOLENT_JOBS_MAX_ATTEMPTS": "3",
        "SOLENT_JOBS_POLL_SECONDS": "0.2",
    }
    archive = build_archive(load_settings(environ=env, data_dir=tmp_path / "var"))
    load_demo(archive)
    yield archive
    archive.close()


def test_an_ae_is_retried_by_the_queue_with_the_same_message(
    archive: Archive, reserved_port: int
) -> None:
    ris = Ris(reserved_port, answers=["AE"])
    try:
        row = DestinationRow("ZZB", "127.0.0.1", ris.port, "RIS_ZZB", "ZZB")
        archive.services.directory.add_destination(SYSTEM, row)
        jobs = archive.services.jobs
        jobs.work(SYSTEM, until_idle=True)  # the consumer's cursor starts at the feed's head
        study = study_of(archive, "ZZB", "B7730444")
        to = PatientKey("ZZB", "B7730021")
        archive.services.study_edits.move(ADMIN, study, to, "filed under the wrong patient")
        deadline = time.monotonic() + 30
        while len(ris.frames) < 2 and time.monotonic() < deadline:
            jobs.work(SYSTEM, until_idle=True)  # the retry waits out its backoff first
            time.sleep(0.3)
    finally:
        ris.close()
    first, second = ris.frames
    assert first == second
    msg = hl7.parse(second)
    assert str(msg["PID.F3.R1.C1"]) == "B7730021" and str(msg["IPC.F3"]) == study
    outcomes = sorted(a["outcome"] for a in archive.audit.search(actor_name="ris-notify"))
    assert outcomes == ["failure", "success"]
    assert [j.status for j in jobs.list(SYSTEM) if j.task == "notify_ris"] == ["succeeded"]
