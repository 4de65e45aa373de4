"""Images that arrive under an identifier retired by a merge (A40) or a renumbering (A47) are
filed under the record that replaced it: a modality still working from an old worklist entry
must not create a second record of the patient, nor be refused for its own study."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import select

from solent.app import Archive
from solent.domain.outcomes import Outcome
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.index import schema as t
from solent.services.identity import Change, Demographics, IdentityService, PatientKey

MODALITY = Principal(PrincipalKind.NODE, "CT_ZZB", "ZZB")
DIMSE = Provenance(Channel.DIMSE, calling_ae="CT_ZZB")
PAS = Change(Principal(PrincipalKind.NODE, "hl7:PAS", "ZZB"))
PERSON = Demographics(name="CARTER^JAMES", birth_date="19620417", sex="M")


def _instance(src: Path, out: Path, patient_id: str, study: str, series: str) -> Path:
    ds = pydicom.dcmread(src)
    ds.PatientID = patient_id
    ds.PatientName = "CARTER^JAMES"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = generate_uid()
    if "IssuerOfPatientID" in ds:
        del ds.IssuerOfPatientID
    ds.save_as(out)
    return out


def _store(archive: Archive, path: Path) -> None:
    result = archive.ingestor.ingest_file(path, MODALITY, DIMSE)
    assert result.outcome in (Outcome.STORED, Outcome.DUPLICATE), result


def _patient_of(archive: Archive, study_uid: str) -> tuple[str, str]:
    p, s = t.patient.c, t.study.c
    with archive.index.read() as conn:
        row = conn.execute(
            select(p.issuer, p.local_id)
            .select_from(t.study.join(t.patient, s.patient_pk == p.pk))
            .where(s.study_uid == study_uid)
        ).one()
    return str(row.issuer), str(row.local_id)


def _records(archive: Archive) -> set[str]:
    with archive.index.read() as conn:
        return set(conn.scalars(select(t.patient.c.local_id)))


def test_images_under_a_merged_identifier_join_the_surviving_record(
    archive: Archive, corpus_dir: Path, tmp_path: Path
) -> None:
    src = corpus_dir / "mod_ct_small.dcm"
    ids = IdentityService(archive.index)
    ed_study, ed_series = generate_uid(), generate_uid()
    _store(archive, _instance(src, tmp_path / "1.dcm", "BTMP000812", ed_study, ed_series))
    ids.update_record(PatientKey("ZZB", "B7654321"), PERSON, PAS)
    ids.merge(PatientKey("ZZB", "B7654321"), PatientKey("ZZB", "BTMP000812"), PERSON, PAS)
    assert _patient_of(archive, ed_study) == ("ZZB", "B7654321")

    # The rest of the ED series, still labelled with the temporary ID, arrives after the merge.
    _store(archive, _instance(src, tmp_path / "2.dcm", "BTMP000812", ed_study, ed_series))
    # A new study from a worklist entry made before the merge.
    late_study = generate_uid()
    _store(archive, _instance(src, tmp_path / "3.dcm", "BTMP000812", late_study, generate_uid()))

    assert _patient_of(archive, ed_study) == ("ZZB", "B7654321")
    assert _patient_of(archive, late_study) == ("ZZB", "B7654321")
    assert "BTMP000812" not in _records(archive), "the retired identifier came back as a record"
    target = ids.resolve("ZZB", "B7654321")
    assert target is not None
    kinds = [e["kind"] for e in ids.history(target.patient_pk)]
    assert "filed-under-retired-id" in kinds, kinds


def test_images_under_a_renumbered_identifier_follow_the_new_number(
    archive: Archive, corpus_dir: Path, tmp_path: Path
) -> None:
    src = corpus_dir / "mod_ct_small.dcm"
    ids = IdentityService(archive.index)
    first = generate_uid()
    _store(archive, _instance(src, tmp_path / "1.dcm", "B100", first, generate_uid()))
    ids.change_identifier(PatientKey("ZZB", "B200"), PatientKey("ZZB", "B100"), PAS)
    later = generate_uid()
    _store(archive, _instance(src, tmp_path / "2.dcm", "B100", later, generate_uid()))
    assert _patient_of(archive, first) == ("ZZB", "B200")
    assert _patient_of(archive, later) == ("ZZB", "B200")
    assert _records(archive) >= {"B200"} and "B100" not in _records(archive)
