"""R57 study edits applied at the same moment on PostgreSQL (READ COMMITTED).

SQLite lets one writer at a time, so an edit's checks in its applying transaction see every
edit committed before it. On PostgreSQL two applying transactions run side by side: each
checks, then writes. These tests force the worst interleaving deterministically: the first
edit is held just before its first write until the second edit is either at the same point
(its checks done against the state before the first commits: the race) or waiting for a row
lock the first holds (the edits are serialised); the second then goes on only once the first
has committed. Whatever the interleaving, one edit is done and the other is refused with 409
and a readable reason, nothing of it changed, and every study's totals stay true.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select, text

from solent.app import Archive, build_archive
from solent.demo import load_demo
from solent.index import schema as t
from solent.index import study_edits
from solent.protocols.http import create_app
from solent.settings import load_settings
from tests.unit.security_fixtures import add_user
from tests.unit.test_study_edit_meanwhile import _alice
from tests.unit.test_study_move import _patient_of, _stow, _totals
from tests.unit.test_study_split_merge import BOB, _ct

pytestmark = pytest.mark.interop

#: The first write of each kind of edit's applying transaction (after its checks).
FIRST_WRITES = ("new_study", "new_study_like", "refile_series", "refile_study", "set_accession")
#: How long the first edit waits for the second to reach its write or a lock.
MEET_S = 30.0


class Interleave:
    """Holds the first applying transaction before its first write until the second one is
    there too or waits for a lock; the second goes on once the first edit answered."""

    def __init__(self, archive: Archive) -> None:
        self._archive = archive
        self._lock = threading.Lock()
        self._seen: dict[int, int] = {}  # worker thread -> order of arrival (0, 1)
        self.first_there = threading.Event()
        self.second_there = threading.Event()
        self.first_answered = threading.Event()
        self.second_waited_for_lock = False

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in FIRST_WRITES:
            real = getattr(study_edits, name)
            monkeypatch.setattr(study_edits, name, self._held(real))

    def _held(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def write(*args: Any, **kwargs: Any) -> Any:
            self._arrive()
            return real(*args, **kwargs)

        return write

    def _arrive(self) -> None:
        me = threading.get_ident()
        with self._lock:
            if me in self._seen:  # a later write (or a retry) of the same edit
                return
            order = self._seen[me] = len(self._seen)
        if order == 0:
            self.first_there.set()
            deadline = time.monotonic() + MEET_S
            while time.monotonic() < deadline and not self.second_there.is_set():
                if self._someone_waits_for_a_lock():
                    self.second_waited_for_lock = True
                    return
                time.sleep(0.02)
            return
        self.second_there.set()
        assert self.first_answered.wait(MEET_S), "the first edit never answered"

    def _someone_waits_for_a_lock(self) -> bool:
        """An edit's row-lock statement (a SELECT ... FOR [NO KEY] UPDATE of the records,
        studies or trust) is waiting: not a background job waiting for its own locks."""
        with self._archive.index.engine.connect() as conn:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid() "
                    "AND query ~ 'FROM (patient|study|trust)\\s+WHERE.*FOR (NO KEY )?UPDATE'"
                )
            ).scalar_one()
        return bool(waiting)


@pytest.fixture
def pg_demo(fresh_postgres_url: str, tmp_path: Path) -> Iterator[Archive]:
    settings = load_settings(environ={}, data_dir=tmp_path / "var", database_url=fresh_postgres_url)
    archive = build_archive(settings)
    try:
        load_demo(archive)
        yield archive
    finally:
        archive.close()


@pytest.fixture
def pg_client(pg_demo: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(pg_demo), raise_server_exceptions=False) as client:
        yield client


Request = Callable[[], Any]


def _at_once(
    archive: Archive, monkeypatch: pytest.MonkeyPatch, first: Request, second: Request
) -> tuple[Any, Any, Interleave]:
    """Run two edit requests in two threads, interleaved as the module says."""
    gate = Interleave(archive)
    gate.install(monkeypatch)
    answers: dict[str, Any] = {}

    def run(name: str, request: Request) -> None:
        try:
            answers[name] = request()
            answers[name + " text"] = answers[name].text
        finally:
            if name == "first":
                gate.first_answered.set()

    one = threading.Thread(target=run, args=("first", first))
    two = threading.Thread(target=run, args=("second", second))
    one.start()
    deadline = time.monotonic() + MEET_S
    while not gate.first_there.wait(0.05) and one.is_alive() and time.monotonic() < deadline:
        pass
    answer = answers.get("first")
    assert gate.first_there.is_set(), f"the first edit never reached its write: {answer}"
    two.start()
    one.join(2 * MEET_S)
    two.join(2 * MEET_S)
    assert not one.is_alive() and not two.is_alive(), "an edit hung"
    monkeypatch.undo()
    return answers["first"], answers["second"], gate


def _bob_studies(archive: Archive) -> dict[str, tuple[int, int]]:
    """Every study of Bob's record with its totals (checked true), and no study left empty."""
    st, pa = t.study.c, t.patient.c
    with archive.index.read() as conn:
        uids = conn.execute(
            select(st.study_uid)
            .join(t.patient, pa.pk == st.patient_pk)
            .where(pa.issuer == BOB[0], pa.local_id == BOB[1])
        ).scalars()
        found = [str(u) for u in uids]
    out = {uid: _totals(archive, uid) for uid in found}
    assert all(series > 0 for series, _ in out.values()), f"a study left empty: {out}"
    return out


def _series_study(archive: Archive, series_uid: str) -> str:
    se, st = t.series.c, t.study.c
    with archive.index.read() as conn:
        return str(
            conn.execute(
                select(st.study_uid)
                .select_from(t.series)
                .join(t.study, st.pk == se.study_pk)
                .where(se.series_uid == series_uid)
            ).scalar_one()
        )


def _post(client: TestClient, heads: dict[str, str], study: str, what: str, body: Any) -> Any:
    return lambda: client.post(f"/api/identity/studies/{study}/{what}", json=body, headers=heads)


def _stewards(archive: Archive) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Two stewards of Bob's trust, and a modality that sends his images."""
    return (
        add_user(archive, "adminzb1", "ZZB", "pacs_admin"),
        add_user(archive, "adminzb2", "ZZB", "pacs_admin"),
        add_user(archive, "modzb", "ZZB", "integration"),
    )


def _one_done_one_refused(first: Any, second: Any, why: str) -> None:
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "done"
    assert second.status_code == 409, second.text
    assert why in second.json()["detail"], second.text


def test_two_merges_each_into_the_other_at_once_keep_one_study_with_every_series(
    pg_demo: Archive, pg_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two, sender = _stewards(pg_demo)
    a, b, a1, b1 = (generate_uid() for _ in range(4))
    assert _stow(pg_client, sender, _ct(a, a1, "ACC-A"), _ct(b, b1, "ACC-B")) == 200
    first, second, gate = _at_once(
        pg_demo,
        monkeypatch,
        _post(pg_client, one, a, "merge", {"into_study_uid": b, "reason": "one exam"}),
        _post(pg_client, two, b, "merge", {"into_study_uid": a, "reason": "one exam"}),
    )
    _one_done_one_refused(first, second, "meanwhile")
    studies = _bob_studies(pg_demo)
    assert a not in studies and studies[b] == (2, 2), studies
    assert _series_study(pg_demo, a1) == _series_study(pg_demo, b1) == b
    assert gate.second_waited_for_lock


def test_two_splits_at_once_never_leave_the_study_without_series(
    pg_demo: Archive, pg_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two, sender = _stewards(pg_demo)
    s, s1, s2 = (generate_uid() for _ in range(3))
    assert _stow(pg_client, sender, _ct(s, s1, "ACC-S"), _ct(s, s2, "ACC-S")) == 200
    first, second, gate = _at_once(
        pg_demo,
        monkeypatch,
        _post(pg_client, one, s, "split", {"series_uids": [s1], "reason": "two exams"}),
        _post(pg_client, two, s, "split", {"series_uids": [s2], "reason": "two exams"}),
    )
    _one_done_one_refused(first, second, "changed meanwhile")
    studies = _bob_studies(pg_demo)
    new = first.json()["to_study_uid"]
    assert studies[s] == (1, 1) and studies[new] == (1, 1), studies
    assert (_series_study(pg_demo, s1), _series_study(pg_demo, s2)) == (new, s)
    assert gate.second_waited_for_lock


def test_a_split_of_a_study_merged_away_at_the_same_time_is_refused_with_409(
    pg_demo: Archive, pg_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two, sender = _stewards(pg_demo)
    s, m, s1, s2, m1 = (generate_uid() for _ in range(5))
    parts = (_ct(s, s1, "ACC-S"), _ct(s, s2, "ACC-S"), _ct(m, m1, "ACC-M"))
    assert _stow(pg_client, sender, *parts) == 200
    first, second, gate = _at_once(
        pg_demo,
        monkeypatch,
        _post(pg_client, one, s, "merge", {"into_study_uid": m, "reason": "one exam"}),
        _post(pg_client, two, s, "split", {"series_uids": [s1], "reason": "two exams"}),
    )
    _one_done_one_refused(first, second, "meanwhile")
    assert s in second.json()["detail"]
    studies = _bob_studies(pg_demo)
    assert s not in studies and studies[m] == (3, 3), studies
    assert len(studies) == 2, studies  # and Bob's demo study: no new study was made
    assert gate.second_waited_for_lock


def test_a_split_of_a_study_moved_to_another_record_at_the_same_time_is_refused(
    pg_demo: Archive, pg_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Patient safety: the split planned under Bob's record must not file the series it
    takes out under Bob once the whole study was moved to the right patient."""
    one, two, sender = _stewards(pg_demo)
    s, s1, s2 = (generate_uid() for _ in range(3))
    assert _stow(pg_client, sender, _ct(s, s1, "ACC-S"), _ct(s, s2, "ACC-S")) == 200
    to = {"to": {"issuer": "ZZB", "patient_id": "B7730021"}, "reason": "wrong patient"}
    first, second, gate = _at_once(
        pg_demo,
        monkeypatch,
        _post(pg_client, one, s, "move", to),
        _post(pg_client, two, s, "split", {"series_uids": [s1], "reason": "two exams"}),
    )
    _one_done_one_refused(first, second, "meanwhile")
    assert s not in _bob_studies(pg_demo)
    assert _series_study(pg_demo, s1) == _series_study(pg_demo, s2) == s
    assert _patient_of(pg_demo, s) == ("ZZB", "B7730021")
    assert _totals(pg_demo, s) == (2, 2)
    assert gate.second_waited_for_lock


def test_two_series_moves_at_once_never_empty_the_study(
    pg_demo: Archive, pg_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two, sender = _stewards(pg_demo)
    s, s1, s2 = (generate_uid() for _ in range(3))
    assert _stow(pg_client, sender, _ct(s, s1, "ACC-S"), _ct(s, s2, "ACC-S")) == 200
    to = {"to": {"issuer": "ZZB", "patient_id": "B7730021"}, "reason": "Alice's series"}
    first, second, gate = _at_once(
        pg_demo,
        monkeypatch,
        _post(pg_client, one, s, f"series/{s1}/move", to),
        _post(pg_client, two, s, f"series/{s2}/move", to),
    )
    _one_done_one_refused(first, second, "move the study instead")
    assert _bob_studies(pg_demo)[s] == (1, 1)
    assert _series_study(pg_demo, s2) == s and _patient_of(pg_demo, s) == BOB
    new = first.json()["to_study_uid"]
    assert _series_study(pg_demo, s1) == new and _patient_of(pg_demo, new) == ("ZZB", "B7730021")
    assert gate.second_waited_for_lock


def test_two_studies_of_two_patients_corrected_to_one_accession_at_once(
    pg_demo: Archive, pg_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two studies, two records, one accession: the edits share no study and no record, and
    still take turns (an accession of a trust names one stored study)."""
    one, two, sender = _stewards(pg_demo)
    x, y, x1, y1 = (generate_uid() for _ in range(4))
    assert _stow(pg_client, sender, _ct(x, x1, "ACC-X"), _alice(y, y1, "ACC-Y")) == 200
    body = {"accession_number": "ACC-9", "reason": "booked twice"}
    first, second, gate = _at_once(
        pg_demo,
        monkeypatch,
        _post(pg_client, one, x, "accession", body),
        _post(pg_client, two, y, "accession", body),
    )
    _one_done_one_refused(first, second, "carried by another stored study")
    st = t.study.c
    with pg_demo.index.read() as conn:
        carrying = conn.execute(select(st.study_uid).where(st.accession_number == "ACC-9"))
        assert list(carrying.scalars()) == [x]
    assert gate.second_waited_for_lock
