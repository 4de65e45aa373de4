"""An instance sent into a study filed under a patient record the sender may not see is held
for identity reconciliation and answered exactly as a stored one (issue 11, "not visible = not
found"): STOW-RS here, C-STORE in test_dimse_access_matrix. Never filed under the wrong
patient, nothing about the other record in the answer, a regional work-queue item for the
person who decides, and the kept copy is safe from `solent check --repair`."""

from __future__ import annotations

from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from solent.app import Archive
from solent.index import schema as t
from solent.ingest.held import HELD
from solent.services.check import check_archive
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template, study_of
from tests.unit.stow_support import ct_instance, stow_body

__all__ = ["demo", "demo_client", "demo_template"]


def _stow(client: TestClient, headers: dict[str, str], part: bytes) -> tuple[int, str, bytes]:
    body, content_type = stow_body(part)
    r = client.post("/dicomweb/studies", content=body, headers={**headers, **content_type})
    return r.status_code, r.headers.get("content-type", ""), r.content


def _bob_state(archive: Archive) -> tuple[object, ...]:
    identity = archive.identity
    found = identity.resolve("ZZB", "B7730444")
    assert found is not None
    studies = identity.studies({found.patient_pk})
    return (
        identity.record(found.patient_pk),
        sorted((s["study_uid"], s["num_instances"]) for s in studies),
    )


def _held(archive: Archive) -> list[dict[str, object]]:
    with archive.index.read() as conn:
        return [dict(r) for r in conn.execute(select(t.held_instance)).mappings()]


def test_stow_into_another_trusts_study_answers_like_a_new_study(
    demo: Archive, demo_client: TestClient
) -> None:
    outsider = add_user(demo, "drzd", "ZZD", "clinician")
    bob_study = study_of(demo, "ZZB", "B7730444")
    before = _bob_state(demo)
    series, sop = generate_uid(), generate_uid()
    hidden = _stow(
        demo_client, outsider, ct_instance("D0001", "ZZD", bob_study, series=series, sop=sop)
    )
    nobody_study, nobody_series, nobody_sop = generate_uid(), generate_uid(), generate_uid()
    missing = _stow(
        demo_client,
        outsider,
        ct_instance("D0001", "ZZD", nobody_study, series=nobody_series, sop=nobody_sop),
    )
    masked = hidden[2]
    for mine, theirs in ((bob_study, nobody_study), (series, nobody_series), (sop, nobody_sop)):
        masked = masked.replace(mine.encode(), theirs.encode())
    assert (hidden[0], hidden[1], masked) == missing, hidden
    assert hidden[0] == 200
    for secret in (b"B7730444", b"ZZB", b"BOB", b"another patient"):
        assert secret not in hidden[2]
    # Never filed under Bob (nor under ZZD's record), and ZZD still finds nothing there.
    assert _bob_state(demo) == before
    assert (
        demo_client.get(f"/dicomweb/studies/{bob_study}/metadata", headers=outsider).status_code
        == 404
    )
    (held,) = _held(demo)
    assert (held["sop_uid"], held["study_uid"], held["status"]) == (sop, bob_study, "held")
    assert (held["patient_issuer"], held["patient_id"]) == ("ZZD", "D0001")
    assert demo.store.exists(str(held["path"]))
    # The audit trail has the one store record of the sender, naming what it sent.
    rows = [
        r
        for r in demo.audit.search(actor_name="drzd", action="store")
        if r["study_uid"] == bob_study
    ]
    assert [(r["patient_issuer"], r["patient_id"]) for r in rows] == [("ZZD", "D0001")]
    assert '"held"' in rows[0]["detail"]
    # The same bytes again: the same answer, still one held copy.
    assert _stow(
        demo_client, outsider, ct_instance("D0001", "ZZD", bob_study, series=series, sop=sop)
    )[0] in (200,)
    # Only a regional administrator sees the work-queue item (it names both records).
    regional = add_user(demo, "root", None, "pacs_admin")
    items = demo_client.get("/api/identity/data-quality", headers=regional).json()
    (item,) = [i for i in items if i["kind"] == HELD]
    assert item["pk"] == held["work_item"] and "B7730444" in item["detail"]
    for trust in ("ZZD", "ZZB"):
        admin = add_user(demo, f"admin{trust.lower()}", trust, "pacs_admin")
        seen = demo_client.get("/api/identity/data-quality", headers=admin).json()
        assert all(i["kind"] != HELD for i in seen), trust
    # `solent check` counts the kept copy as referenced: nothing to repair.
    report = check_archive(demo.index, demo.store, repair=True)
    assert not report.orphan_blobs
    assert demo.store.exists(str(held["path"]))


def test_a_visible_conflict_is_refused_with_the_reason(
    demo: Archive, demo_client: TestClient
) -> None:
    """A sender who may see the record the study is filed under learns nothing new from the
    refusal, and needs it to correct the Patient ID: refused as before, nothing held."""
    insider = add_user(demo, "drzb", "ZZB", "clinician")
    bob_study = study_of(demo, "ZZB", "B7730444")
    status, _, body = _stow(demo_client, insider, ct_instance("B7739999", "ZZB", bob_study))
    assert status == 409, body
    assert b"already filed under another patient record" in body
    assert _held(demo) == []
