"""R57: a study edit is checked when asked for and again when it is applied; another steward's
edit that lands in between (on any backend: asking reads in one transaction, applying writes
in another) makes it a 409 that says what changed, and nothing of it is done.

PostgreSQL, where two applying transactions also run side by side, has its own tests
(tests/interop/test_study_edit_concurrency_postgres.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from solent.app import Archive
from solent.domain.principal import Principal
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template
from tests.unit.test_study_move import _patient_of, _stow, _totals
from tests.unit.test_study_split_merge import _counts, _ct, _events

__all__ = ["demo", "demo_client", "demo_template"]

ALICE_ZZB = {"issuer": "ZZB", "patient_id": "B7730021"}
Meanwhile = Callable[[Any, Principal], Any]


def _before_applying(monkeypatch: pytest.MonkeyPatch, other: Meanwhile) -> list[Any]:
    """Run ``other`` (the other steward's edit, done at once) after the next edit is asked
    for and checked, before it is applied. Returns where other's answer lands."""
    from solent.services import study_edit

    request = study_edit.StudyEditService._request
    done: list[Any] = []

    def meanwhile(self: Any, principal: Principal, values: dict[str, Any], *, cross: bool) -> Any:
        if not done:
            done.append(None)
            done[0] = other(self, principal)
        return request(self, principal, values, cross=cross)

    monkeypatch.setattr(study_edit.StudyEditService, "_request", meanwhile)
    return done


def test_two_series_moves_at_once_never_empty_the_study(
    demo: Archive, demo_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each series of a two-series study moved to a study of its own, each asked for while
    the other series was still in the study: the study must not be emptied (and deleted, its
    order with it); the only series of a study is moved by moving the study."""
    admin = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    sender = add_user(demo, "modzb", "ZZB", "integration")
    s, s1, s2 = (generate_uid() for _ in range(3))
    assert _stow(demo_client, sender, _ct(s, s1, "ACC-S"), _ct(s, s2, "ACC-S")) == 200
    body = {"to": ALICE_ZZB, "reason": "Alice's series"}
    other = _before_applying(
        monkeypatch,
        lambda svc, who: svc.move_series(who, s, s2, _key(ALICE_ZZB), "Alice's series"),
    )
    late = demo_client.post(f"/api/identity/studies/{s}/series/{s1}/move", json=body, headers=admin)
    assert other[0]["status"] == "done"
    assert late.status_code == 409, late.text
    assert "meanwhile" in late.json()["detail"] and "move the study" in late.json()["detail"]
    assert _totals(demo, s) == (1, 1) and _patient_of(demo, s) == ("ZZB", "B7730444")
    assert len(_events(demo, "series-moved")) == 1


def test_a_series_move_into_a_study_merged_away_meanwhile_does_not_make_it_again(
    demo: Archive, demo_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study named to receive the series was merged into another before the move was
    applied: the move is refused, not filed into a study made again under the merged UID."""
    admin = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    sender = add_user(demo, "modzb", "ZZB", "integration")
    s, s1, s2, b, b1, c, c1 = (generate_uid() for _ in range(7))
    bob = [_ct(s, s1, "ACC-S"), _ct(s, s2, "ACC-S")]
    assert _stow(demo_client, sender, *bob) == 200
    alice = [_alice(b, b1, "ACC-B"), _alice(c, c1, "ACC-C")]
    assert _stow(demo_client, sender, *alice) == 200
    other = _before_applying(monkeypatch, lambda svc, who: svc.merge(who, b, c, "one exam"))
    body = {"to": ALICE_ZZB, "to_study_uid": b, "reason": "Alice's series"}
    late = demo_client.post(f"/api/identity/studies/{s}/series/{s1}/move", json=body, headers=admin)
    assert other[0]["status"] == "done"
    assert late.status_code == 409, late.text
    assert f"study {b} was merged into study {c}" in late.json()["detail"], late.text
    assert _totals(demo, s) == (2, 2) and _totals(demo, c) == (2, 2)
    reader = add_user(demo, "drzb", "ZZB", "clinician")
    gone = demo_client.get(f"/dicomweb/studies/{b}/metadata", headers=reader)
    assert gone.status_code == 404


def test_two_studies_corrected_to_one_accession_at_once_leave_it_on_one(
    demo: Archive, demo_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One accession names one stored study: the second correction to the same accession,
    asked for while no study carried it, is refused when applied."""
    admin = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    sender = add_user(demo, "modzb", "ZZB", "integration")
    reader = add_user(demo, "drzb", "ZZB", "clinician")
    x, y, x1, y1 = (generate_uid() for _ in range(4))
    assert _stow(demo_client, sender, _ct(x, x1, "ACC-X"), _ct(y, y1, "ACC-Y")) == 200
    other = _before_applying(
        monkeypatch,
        lambda svc, who: svc.correct_accession(who, x, "ACC-9", None, "booked twice"),
    )
    body = {"accession_number": "ACC-9", "reason": "booked twice"}
    late = demo_client.post(f"/api/identity/studies/{y}/accession", json=body, headers=admin)
    assert other[0]["status"] == "done"
    assert late.status_code == 409, late.text
    assert "carried by another stored study" in late.json()["detail"], late.text
    found = demo_client.get(
        "/dicomweb/studies", params={"AccessionNumber": "ACC-9"}, headers=reader
    )
    assert found.status_code == 200 and x in found.text and y not in found.text
    assert set(_counts(demo_client, reader)) >= {x, y}


def _key(record: dict[str, str]) -> Any:
    from solent.services.identity import PatientKey

    return PatientKey(record["issuer"], record["patient_id"])


def _alice(study: str, series: str, accession: str) -> bytes:
    """One of Alice's (ZZB record) CT images."""
    from io import BytesIO

    import pydicom

    from tests.unit.stow_support import ct_instance

    raw = ct_instance("B7730021", "ZZB", study, series=series, name="DEMO^ALICE")
    ds = pydicom.dcmread(BytesIO(raw))
    ds.AccessionNumber = accession
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
