"""Modality Performed Procedure Steps (R17) as the service keeps them, whatever a modality sends."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

from solent.app import Archive
from solent.domain.principal import Principal, PrincipalKind
from solent.errors import InvalidInput
from solent.services.performed_steps import InvalidInstance, StepReport

CT = Principal(PrincipalKind.NODE, "CT_ZZA", "ZZA", roles=frozenset({"store"}))


def _report(status: str, step_id: str, accession: str) -> StepReport:
    study = "1.2.3.4"
    return StepReport(status, "X1", study, accession, "CT", step_id, "", ((accession, study),), {})


def test_over_long_values_are_cut_to_their_columns_on_n_set_as_on_n_create(
    archive: Archive,
) -> None:
    """An N-SET's over-long SH values were cut to 64, not 16: PostgreSQL refused the update
    (0110 for a valid step completion) where SQLite kept a value wider than the column."""
    steps = archive.services.performed_steps
    uid = generate_uid()
    steps.create(CT, uid, _report("IN PROGRESS", "P" * 40, "A" * 40))
    assert steps.update(CT, uid, _report("COMPLETED", "Q" * 40, "B" * 40)) == "COMPLETED"
    [step] = steps.steps(CT)
    assert step["performed_step_id"] == "Q" * 16
    assert step["accession_number"] == "B" * 16


def test_a_study_uid_that_is_no_uid_or_an_over_long_patient_id_is_refused(
    archive: Archive,
) -> None:
    """Before: accepted on SQLite (the step's column cut the UID to another study's), and on
    PostgreSQL the audit record failed: 0110 processing failure instead of 0106."""
    steps = archive.services.performed_steps
    uid = generate_uid()
    odd_study = StepReport("IN PROGRESS", "X1", "", "", "CT", "P1", "", (("", "9" * 100),), {})
    long_patient = StepReport("IN PROGRESS", "X" * 65, "", "", "CT", "P1", "", (), {})
    for report in (odd_study, long_patient):
        with pytest.raises(InvalidInput):
            steps.create(CT, uid, report)
    assert steps.steps(CT) == []


def test_a_step_instance_uid_that_is_no_uid_is_refused(archive: Archive) -> None:
    """N-CREATE with Affected SOP Instance UID ``1.2.abc`` was kept as a step (no N-SET could
    name it validly); now refused as an invalid object instance (0117) and nothing kept."""
    steps = archive.services.performed_steps
    for uid in ("1.2.abc", "1..2", "1.2\n", "1." + "2" * 70):
        with pytest.raises(InvalidInstance):
            steps.create(CT, uid, _report("IN PROGRESS", "P1", "A1"))
    assert steps.steps(CT) == []
