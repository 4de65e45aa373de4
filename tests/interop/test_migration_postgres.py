"""The migration state on PostgreSQL: the same decisions and transfer as on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from solent.app import Archive, build_archive
from solent.settings import load_settings
from tests.unit import test_migration as flows

pytestmark = pytest.mark.interop


@pytest.fixture
def pg_archive(fresh_postgres_url: str, tmp_path: Path) -> Iterator[Archive]:
    settings = load_settings(
        environ={"SOLENT_DATABASE_URL": fresh_postgres_url}, data_dir=tmp_path / "var"
    )
    a = build_archive(settings)
    assert a.index.dialect == "postgresql"
    a.index.add_trust("ZZA", "Trust A")
    a.index.add_trust("ZZB", "Trust B")
    yield a
    a.close()


def test_dry_run_and_identity_hold_on_postgres(pg_archive: Archive, tmp_path: Path) -> None:
    flows.test_dry_run_says_what_waits_and_changes_nothing(pg_archive, tmp_path)


def test_transfer_resume_and_delta_on_postgres(pg_archive: Archive, tmp_path: Path) -> None:
    flows.test_folder_transfer_is_audited_resumable_and_picks_up_changed_demographics(
        pg_archive, tmp_path
    )


def test_a_sop_uid_listed_twice_is_held_on_postgres(pg_archive: Archive, tmp_path: Path) -> None:
    flows.test_one_sop_uid_listed_twice_is_held_and_reported_not_crashed_or_overwritten(
        pg_archive, tmp_path
    )


def test_instances_without_patient_id_on_postgres(pg_archive: Archive, tmp_path: Path) -> None:
    flows.test_instances_without_patient_id_move_each_study_under_its_own_record(
        pg_archive, tmp_path
    )


def test_lossy_listed_names_repaired_on_postgres(pg_archive: Archive, tmp_path: Path) -> None:
    flows.test_a_name_the_legacy_listing_lost_letters_of_is_taken_from_the_instance(
        pg_archive, tmp_path
    )


def test_held_records_are_found_for_a_source_of_more_than_65535_patients(
    pg_archive: Archive, tmp_path: Path
) -> None:
    """Reconcile looked up every record of the source in one statement, one parameter each:
    PostgreSQL takes at most 65535, so a legacy archive of more patients could not be
    reconciled at all. The held records come from the open work items now."""
    flows.test_two_nhs_numbers_for_one_local_id_hold_its_studies(pg_archive, tmp_path)
    resolved = pg_archive.identity.resolve("ZZA", "P1")
    assert resolved is not None
    reconciler = pg_archive.services.migration._reconciler
    with pg_archive.index.read() as conn:
        held = reconciler._blocked_records(
            conn, {resolved.patient_pk, *range(10**6, 10**6 + 70_000)}
        )
    assert set(held) == {resolved.patient_pk} and "nhs-number-changed" in held[resolved.patient_pk]
