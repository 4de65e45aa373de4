"""R57 split and merge on PostgreSQL: the same scenarios as the unit tests (split and its
reversal, merge, late images, its reversal, an IOCM note naming the old study), against a
fresh PostgreSQL index, whose correlated EXISTS over the moved series, study deletion and
re-creation run there as they do on SQLite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from solent.app import Archive, build_archive
from solent.demo import load_demo
from solent.protocols.http import create_app
from solent.settings import load_settings
from tests.unit import test_study_split_merge as scenarios

pytestmark = pytest.mark.interop

Scenario = Callable[[Archive, TestClient], None]


@pytest.mark.parametrize(
    "scenario",
    [
        scenarios.test_a_split_gives_series_a_new_study_of_the_same_record_and_is_reversible,
        scenarios.test_a_merge_puts_every_series_in_one_study_and_its_reversal_brings_the_other_back,
        scenarios.test_a_rejection_note_naming_the_old_study_withdraws_split_out_instances,
    ],
    ids=["split", "merge", "iocm"],
)
def test_split_and_merge_on_postgresql(
    scenario: Scenario, fresh_postgres_url: str, tmp_path: Path
) -> None:
    settings = load_settings(environ={}, data_dir=tmp_path / "var", database_url=fresh_postgres_url)
    archive = build_archive(settings)
    try:
        load_demo(archive)
        with TestClient(create_app(archive), raise_server_exceptions=False) as client:
            scenario(archive, client)
    finally:
        archive.close()
