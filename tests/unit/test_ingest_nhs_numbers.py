"""R1/R2/R12 on the DICOM interface: an NHS number in Other Patient IDs Sequence is checked as
one from HL7 is (modulus 11, placeholders), and a bad one is queued for a person."""

from __future__ import annotations

from pathlib import Path

import pytest

from solent.app import Archive
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.services.identity import IdentityService
from tests.interop.hl7_support import write_ct


@pytest.mark.parametrize(
    ("given", "stored", "valid", "queued"),
    [
        ("9434765919", "9434765919", True, False),
        ("943 476 5919", "9434765919", True, False),
        ("9434765918", "9434765918", False, True),  # check digit mismatch
        ("0000000000", "0000000000", False, True),  # checksum passes, placeholder (R2)
    ],
)
def test_an_nhs_number_in_the_images_is_checked_and_a_bad_one_queued(
    archive: Archive, tmp_path: Path, given: str, stored: str, valid: bool, queued: bool
) -> None:
    path = write_ct(
        tmp_path / "ct.dcm",
        patient_id="A77",
        issuer="ZZA",
        name="DOE^JANE",
        birth_date="19800101",
        sex="F",
        accession="ACC77",
        study_uid="2.25.7777",
        study_date="20250101",
        nhs_number=given,
    )
    who = Principal(PrincipalKind.IMPORTER, "test", "ZZA")
    assert archive.ingestor.ingest_file(path, who, Provenance(Channel.IMPORT)).ok
    ident = IdentityService(archive.index)
    found = ident.resolve("ZZA", "A77")
    assert found is not None
    record = ident.record(found.patient_pk)
    assert record is not None
    assert (record["record"]["nhs_number"], record["record"]["nhs_number_valid"]) == (
        stored,
        valid,
    )
    items = [w for w in ident.work_queue() if w["kind"] == "invalid-nhs-number"]
    assert [w["local_id"] for w in items] == (["A77"] if queued else [])
