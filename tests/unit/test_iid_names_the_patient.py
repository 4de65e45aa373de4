"""An EPR launch names the patient as well as the study (Epic, Cerner and CRIS-style IID links
carry patientID beside accessionNumber or studyUID). The study must be that patient's: a
mistyped or reused accession, or a link built for the wrong patient, must never open another
person's images under the patient the clinician has open in the EPR."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from solent.app import Archive
from solent.domain.principal import SYSTEM
from solent.index import audit as audit_store
from solent.protocols.http import create_app
from tests.unit.security_fixtures import add_user, demo, demo_template

__all__ = ["demo", "demo_template"]

BOB = ("ZZB", "B7730444")  # records at ZZB only
ALICE_ZZB = ("ZZB", "B7730021")  # Alice's ZZB record, linked with A100001 at ZZA


def _studies(archive: Archive, issuer: str, local_id: str) -> list[dict[str, str]]:
    records = archive.services.records
    person = records.person(SYSTEM, issuer=issuer, local_id=local_id)
    return records.person_studies(SYSTEM, person)


@pytest.fixture
def zzb(demo: Archive) -> Iterator[TestClient]:
    headers = add_user(demo, "drzb-iid", "ZZB", "clinician")
    with TestClient(create_app(demo), headers=headers) as c:
        yield c


def _views(archive: Archive, study_uid: str) -> int:
    return len(audit_store.search(archive.index, study_uid=study_uid, action="view", limit=1000))


def test_a_study_launch_for_another_patient_opens_nothing(zzb: TestClient, demo: Archive) -> None:
    bob_study = _studies(demo, *BOB)[0]
    alice_cx = f"{ALICE_ZZB[1]}^^^ZZB^MR"
    views_before = _views(demo, bob_study["study_uid"])
    for params in (
        {"requestType": "STUDY", "accessionNumber": bob_study["accession_number"]},
        {"requestType": "STUDY", "studyUID": bob_study["study_uid"]},
    ):
        r = zzb.get(
            "/trusts/ZZB/IHEInvokeImageDisplay",
            params={**params, "patientID": alice_cx},
            follow_redirects=False,
        )
        # Before the fix: 303 into Bob's study, patientID ignored.
        assert r.status_code == 404, r.text
        assert bob_study["study_uid"] not in r.text
        api = zzb.get(
            "/api/viewer/launch", params={**params, "patientID": alice_cx, "trust": "ZZB"}
        )
        assert api.status_code == 404
    assert _views(demo, bob_study["study_uid"]) == views_before  # not audited as viewed


def test_a_study_launch_for_its_own_patient_opens_it(zzb: TestClient, demo: Archive) -> None:
    bob_study = _studies(demo, *BOB)[0]
    views_before = _views(demo, bob_study["study_uid"])
    for patient_id in (f"{BOB[1]}^^^ZZB^MR", BOB[1]):  # CX.4 defaults to the endpoint's trust
        r = zzb.get(
            "/trusts/ZZB/IHEInvokeImageDisplay",
            params={
                "requestType": "STUDY",
                "accessionNumber": bob_study["accession_number"],
                "patientID": patient_id,
            },
            follow_redirects=False,
        )
        assert r.status_code == 303, (patient_id, r.text)
        assert r.headers["location"] == f"/viewer/#/study/{bob_study['study_uid']}"
    assert _views(demo, bob_study["study_uid"]) == views_before + 2  # each launch audited


def test_a_linked_record_of_the_same_person_is_the_same_patient(
    zzb: TestClient, demo: Archive
) -> None:
    """Alice's ZZA study launched from ZZB's EPR with ZZB's MRN for her: the same person."""
    zza_study = next(s for s in _studies(demo, *ALICE_ZZB) if s["issuer"] == "ZZA")
    r = zzb.get(
        "/IHEInvokeImageDisplay",
        params={
            "requestType": "STUDY",
            "studyUID": zza_study["study_uid"],
            "patientID": f"{ALICE_ZZB[1]}^^^ZZB^MR",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
