"""One contract for the Index on SQLite and on PostgreSQL, through the real Ingestor.

Each PostgreSQL test gets a database of its own (``fresh_postgres_url``), each SQLite test a
file of its own; blobs go to a filesystem store. What is asserted is what a user would check:
outcomes, what the listings and counts say, what the change feed carries.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, func, insert, inspect, select

from solent.domain.outcomes import Outcome, RejectReason, StoreResult
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.errors import AlreadyExists, NotFound
from solent.index import schema as t
from solent.index.sql import Index, now
from solent.ingest import Ingestor, IngestPolicy
from solent.services.query import QueryService
from solent.storage import blob_key_for
from solent.storage.filesystem import FileBlobStore
from tests.contract.synthetic import Written, new_uid, write_instance


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url


@pytest.fixture
def index(index_url: str) -> Iterator[Index]:
    idx = Index(index_url)
    idx.migrate()
    idx.add_trust("ZZA", "Trust A")
    idx.add_trust("ZZB", "Trust B")
    yield idx
    idx.close()


@pytest.fixture
def store(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "blobs")


@pytest.fixture
def ingestor(index: Index, store: FileBlobStore) -> Ingestor:
    return Ingestor(index, store)


def importer(trust: str) -> Principal:
    return Principal(PrincipalKind.IMPORTER, "contract-test", trust)


def ingest(ing: Ingestor, w: Written, trust: str = "ZZA") -> StoreResult:
    return ing.ingest_file(
        w.path, importer(trust), Provenance(Channel.IMPORT, source_path=str(w.path))
    )


def blob_keys(store: FileBlobStore) -> set[str]:
    return {k for k, _ in store.iter_keys()}


def series_counts(index: Index) -> dict[str, int]:
    with index.read() as conn:
        rows = conn.execute(select(t.series.c.series_uid, t.series.c.num_instances))
        return {r.series_uid: r.num_instances for r in rows}


def study_row(index: Index, study_uid: str) -> dict[str, Any]:
    for row in QueryService(index).list_studies(importer("ZZA"), limit=1000):
        if row["study_uid"] == study_uid:
            return row
    raise AssertionError(f"study {study_uid} is not listed")


# -- schema --------------------------------------------------------------------------------


def test_migrations_create_the_whole_schema_from_empty(index_url: str) -> None:
    idx = Index(index_url)
    try:
        assert inspect(idx.engine).get_table_names() == []
        idx.migrate()
        tables = set(inspect(idx.engine).get_table_names())
        assert set(t.metadata.tables) <= tables
        assert "alembic_version" in tables
        idx.migrate()  # a second node starting on the same index changes nothing
        with idx.read() as conn:
            assert conn.execute(select(func.count()).select_from(t.trust)).scalar_one() == 0
        assert idx.stats() == {
            "trusts": 0,
            "patients": 0,
            "studies": 0,
            "series": 0,
            "instances": 0,
            "bytes": 0,
        }
    finally:
        idx.close()


# -- trusts and nodes ----------------------------------------------------------------------


def test_trusts_are_added_listed_and_unique(index: Index) -> None:
    index.add_trust("RHM", "University Hospital Southampton")
    assert [(r.code, r.name) for r in index.list_trusts()] == [
        ("RHM", "University Hospital Southampton"),
        ("ZZA", "Trust A"),
        ("ZZB", "Trust B"),
    ]
    trust = index.get_trust("RHM")
    assert trust is not None and trust.name == "University Hospital Southampton"
    assert index.get_trust("NOPE") is None
    with pytest.raises(AlreadyExists):
        index.add_trust("RHM", "again")
    assert len(index.list_trusts()) == 3


def test_dicom_nodes_are_added_listed_and_removed(index: Index) -> None:
    with pytest.raises(NotFound):
        index.add_node("CT1", "10.0.0.5", 104, "NOPE", ["store"])
    node = index.add_node("CT1", "10.0.0.5", 104, "ZZA", ["store"])
    assert node.allowed == ["store"]
    index.add_node("PACS_B", "pacs.zzb", 11112, "ZZB", ["store", "query", "retrieve"])
    with pytest.raises(AlreadyExists):
        index.add_node("CT1", "10.0.0.6", 104, "ZZB", ["query"])
    assert [(n.ae_title, n.trust_code, n.allowed) for n in index.list_nodes()] == [
        ("CT1", "ZZA", ["store"]),
        ("PACS_B", "ZZB", ["store", "query", "retrieve"]),
    ]
    got = index.get_node("PACS_B")
    assert got is not None and (got.host, got.port) == ("pacs.zzb", 11112)
    index.remove_node("CT1")
    assert index.get_node("CT1") is None
    with pytest.raises(NotFound):
        index.remove_node("CT1")
    assert [n.ae_title for n in index.list_nodes()] == ["PACS_B"]


# -- ingest --------------------------------------------------------------------------------


def test_stored_then_duplicate(
    index: Index, store: FileBlobStore, ingestor: Ingestor, tmp_path: Path
) -> None:
    w = write_instance(tmp_path / "a.dcm")
    first = ingest(ingestor, w)
    assert first.outcome is Outcome.STORED
    assert (first.sop_instance_uid, first.study_uid, first.series_uid) == (
        w.sop_instance_uid,
        w.study_uid,
        w.series_uid,
    )
    again = ingest(ingestor, w)
    assert again.outcome is Outcome.DUPLICATE
    assert index.instance_digest(w.sop_instance_uid) == (w.sha256, blob_key_for(w.sha256))
    assert blob_keys(store) == {blob_key_for(w.sha256)}
    with store.open(blob_key_for(w.sha256)) as fp:
        assert fp.read() == w.path.read_bytes()  # stored as received
    stats = index.stats()
    assert (stats["patients"], stats["studies"], stats["series"], stats["instances"]) == (
        1,
        1,
        1,
        1,
    )
    assert stats["bytes"] == w.size
    assert [e["kind"] for e in index.events_since(0)] == ["instance.stored"]


def test_unknown_trust_is_rejected_and_nothing_is_written(
    index: Index, store: FileBlobStore, ingestor: Ingestor, tmp_path: Path
) -> None:
    result = ingest(ingestor, write_instance(tmp_path / "a.dcm"), trust="NOPE")
    assert result.outcome is Outcome.REJECTED and result.reason is RejectReason.UNKNOWN_TRUST
    assert index.stats()["instances"] == 0 and blob_keys(store) == set()


def test_conflict_is_rejected_and_the_first_is_kept(
    index: Index, store: FileBlobStore, ingestor: Ingestor, tmp_path: Path
) -> None:
    first = write_instance(tmp_path / "first.dcm", seed=1)
    other = write_instance(
        tmp_path / "other.dcm",
        seed=2,
        study_uid=first.study_uid,
        series_uid=first.series_uid,
        sop_instance_uid=first.sop_instance_uid,
    )
    assert first.sha256 != other.sha256
    assert ingest(ingestor, first).outcome is Outcome.STORED
    result = ingest(ingestor, other)
    assert result.outcome is Outcome.REJECTED
    assert result.reason is RejectReason.CONFLICT
    assert "first one is kept" in result.message
    assert index.instance_digest(first.sop_instance_uid) == (
        first.sha256,
        blob_key_for(first.sha256),
    )
    assert blob_keys(store) == {blob_key_for(first.sha256)}
    assert index.stats()["instances"] == 1
    assert len(index.events_since(0)) == 1


def test_conflict_policy_replace_swaps_the_content(
    index: Index, store: FileBlobStore, tmp_path: Path
) -> None:
    ing = Ingestor(index, store, IngestPolicy(conflict="replace"))
    first = write_instance(tmp_path / "first.dcm", seed=1)
    other = write_instance(
        tmp_path / "other.dcm",
        seed=2,
        size=24,
        study_uid=first.study_uid,
        series_uid=first.series_uid,
        sop_instance_uid=first.sop_instance_uid,
    )
    assert ingest(ing, first).outcome is Outcome.STORED
    assert ingest(ing, other).outcome is Outcome.REPLACED
    assert index.instance_digest(first.sop_instance_uid) == (
        other.sha256,
        blob_key_for(other.sha256),
    )
    assert blob_keys(store) == {blob_key_for(other.sha256)}  # the old bytes are gone
    assert index.stats()["instances"] == 1 and index.stats()["bytes"] == other.size
    row = study_row(index, first.study_uid)
    assert (row["num_series"], row["num_instances"]) == (1, 1)
    assert series_counts(index) == {first.series_uid: 1}
    assert [e["kind"] for e in index.events_since(0)] == ["instance.stored", "instance.replaced"]


def test_study_of_another_patient_is_rejected_as_patient_mismatch(
    index: Index, store: FileBlobStore, ingestor: Ingestor, tmp_path: Path
) -> None:
    p1 = write_instance(tmp_path / "p1.dcm", patient_id="P1")
    assert ingest(ingestor, p1).outcome is Outcome.STORED
    before_stats, before_blobs = index.stats(), blob_keys(store)
    # Same study, another patient at the same trust; then the same study from another trust.
    p2 = write_instance(tmp_path / "p2.dcm", patient_id="P2", study_uid=p1.study_uid, seed=3)
    same_id_other_trust = write_instance(
        tmp_path / "zzb.dcm", patient_id="P1", study_uid=p1.study_uid, seed=4
    )
    for w, trust in ((p2, "ZZA"), (same_id_other_trust, "ZZB")):
        result = ingest(ingestor, w, trust=trust)
        assert result.outcome is Outcome.REJECTED
        assert result.reason is RejectReason.PATIENT_MISMATCH
        assert index.instance_digest(w.sop_instance_uid) is None
    # Series UID reused under another study of the same patient: also refused.
    moved = write_instance(
        tmp_path / "moved.dcm", patient_id="P1", series_uid=p1.series_uid, seed=5
    )
    result = ingest(ingestor, moved)
    assert result.reason is RejectReason.PATIENT_MISMATCH
    assert index.stats() == before_stats  # not even the second patient record was kept
    assert blob_keys(store) == before_blobs  # the rejected blobs were removed again
    assert [r["local_id"] for r in QueryService(index).list_studies(importer("ZZA"))] == ["P1"]


def test_same_local_id_at_two_trusts_is_two_patients(
    index: Index, ingestor: Ingestor, tmp_path: Path
) -> None:
    a = write_instance(tmp_path / "a.dcm", patient_id="12345", patient_name="SMITH^ANN")
    b = write_instance(tmp_path / "b.dcm", patient_id="12345", patient_name="JONES^BOB")
    assert ingest(ingestor, a, trust="ZZA").outcome is Outcome.STORED
    assert ingest(ingestor, b, trust="ZZB").outcome is Outcome.STORED
    patients = QueryService(index).list_patients(importer("ZZA"))
    assert sorted((p["issuer"], p["local_id"], p["name"]) for p in patients) == [
        ("ZZA", "12345", "SMITH^ANN"),
        ("ZZB", "12345", "JONES^BOB"),
    ]
    query = QueryService(index)
    at_a = query.list_studies(importer("ZZA"), issuer="ZZA", local_id="12345")
    at_b = query.list_studies(importer("ZZA"), issuer="ZZB", local_id="12345")
    assert [s["study_uid"] for s in at_a] == [a.study_uid]
    assert [s["study_uid"] for s in at_b] == [b.study_uid]


def test_study_aggregates_follow_what_was_stored(
    index: Index, ingestor: Ingestor, tmp_path: Path
) -> None:
    study = new_uid()
    ct, mr = new_uid(), new_uid()
    written = [
        write_instance(tmp_path / f"ct{i}.dcm", study_uid=study, series_uid=ct, seed=i)
        for i in range(3)
    ] + [
        write_instance(
            tmp_path / f"mr{i}.dcm", study_uid=study, series_uid=mr, modality="MR", seed=10 + i
        )
        for i in range(2)
    ]
    for w in written:
        assert ingest(ingestor, w).outcome is Outcome.STORED
    assert ingest(ingestor, written[0]).outcome is Outcome.DUPLICATE  # counts nothing
    row = study_row(index, study)
    assert (row["num_series"], row["num_instances"]) == (2, 5)
    assert sorted(row["modalities"].split("\\")) == ["CT", "MR"]
    assert series_counts(index) == {ct: 3, mr: 2}
    with index.read() as conn:
        size = conn.execute(select(t.study.c.size_bytes).where(t.study.c.study_uid == study))
        assert size.scalar_one() == sum(w.size for w in written)


def test_repair_removal_of_rows_keeps_the_aggregates_right(
    index: Index, ingestor: Ingestor, tmp_path: Path
) -> None:
    """`solent check --repair` drops rows whose blob is gone; listings must stay truthful."""
    study, ct, mr = new_uid(), new_uid(), new_uid()
    cts = [
        write_instance(tmp_path / f"ct{i}.dcm", study_uid=study, series_uid=ct, seed=i)
        for i in range(2)
    ]
    mri = write_instance(tmp_path / "mr.dcm", study_uid=study, series_uid=mr, modality="MR")
    for w in [*cts, mri]:
        assert ingest(ingestor, w).outcome is Outcome.STORED
    assert index.delete_instance_rows(cts[0].sop_instance_uid) == blob_key_for(cts[0].sha256)
    assert index.delete_instance_rows(cts[0].sop_instance_uid) is None
    assert index.instance_digest(cts[0].sop_instance_uid) is None
    row = study_row(index, study)
    assert (row["num_series"], row["num_instances"], row["modalities"]) == (2, 2, "CT\\MR")
    assert series_counts(index) == {ct: 1, mr: 1}
    assert index.stats()["bytes"] == cts[1].size + mri.size

    index.delete_instance_rows(mri.sop_instance_uid)  # the last MR: the series goes
    row = study_row(index, study)
    assert (row["num_series"], row["num_instances"], row["modalities"]) == (1, 1, "CT")
    assert series_counts(index) == {ct: 1}

    index.delete_instance_rows(cts[1].sop_instance_uid)  # the last one: no empty study listed
    assert QueryService(index).list_studies(importer("ZZA")) == []
    stats = index.stats()
    assert (stats["studies"], stats["series"], stats["instances"], stats["bytes"]) == (0, 0, 0, 0)
    # The same study can arrive again later and is filed as new.
    assert ingest(ingestor, cts[1]).outcome is Outcome.STORED
    assert study_row(index, study)["num_instances"] == 1


# -- concurrency ---------------------------------------------------------------------------


def test_concurrent_ingest_into_one_study_loses_no_update(
    index_url: str, index: Index, store: FileBlobStore, tmp_path: Path
) -> None:
    """Eight threads over two Index objects (as two `solent serve` nodes) fill four series of
    one new study at once: every count and the modality list come out exact."""
    second = Index(index_url)
    try:
        nodes = [Ingestor(index, store), Ingestor(second, store)]
        study = new_uid()
        series = [new_uid() for _ in range(4)]
        written = [
            write_instance(
                tmp_path / f"{i}.dcm",
                study_uid=study,
                series_uid=series[i % 4],
                modality="CT" if i % 4 < 2 else "MR",
                seed=i,
            )
            for i in range(48)
        ]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda iw: ingest(nodes[iw[0] % 2], iw[1]), enumerate(written)))
        assert Counter(r.outcome for r in results) == {Outcome.STORED: 48}, results
        row = study_row(index, study)
        assert (row["num_series"], row["num_instances"]) == (4, 48)
        assert sorted(row["modalities"].split("\\")) == ["CT", "MR"]
        assert series_counts(index) == {uid: 12 for uid in series}
        assert index.stats()["patients"] == 1
        assert index.stats()["bytes"] == sum(w.size for w in written)
        assert len(index.events_since(0)) == 48
    finally:
        second.close()


def test_concurrent_ingest_of_the_same_instance_stores_it_once(
    index_url: str, index: Index, store: FileBlobStore, tmp_path: Path
) -> None:
    second = Index(index_url)
    try:
        nodes = [Ingestor(index, store), Ingestor(second, store)]
        w = write_instance(tmp_path / "same.dcm")
        start = threading.Barrier(6)

        def send(i: int) -> StoreResult:
            start.wait(timeout=30)
            return ingest(nodes[i % 2], w)

        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(send, range(6)))
        outcomes = Counter(r.outcome for r in results)
        assert outcomes == {Outcome.STORED: 1, Outcome.DUPLICATE: 5}, results
        assert index.stats()["instances"] == 1
        assert series_counts(index) == {w.series_uid: 1}
        assert blob_keys(store) == {blob_key_for(w.sha256)}
        assert [e["sop_instance_uid"] for e in index.events_since(0)] == [w.sop_instance_uid]
    finally:
        second.close()


def test_postgresql_serialization_failures_are_retried(fresh_postgres_url: str) -> None:
    """PostgreSQL only: SQLite serialises writers with BEGIN IMMEDIATE, nothing to retry."""
    index = Index(fresh_postgres_url)
    index.migrate()
    try:
        # Two SERIALIZABLE transactions that each read the trust table and then add a trust form
        # a write-skew cycle: PostgreSQL aborts one with 40001, and Index.write must retry it.
        attempts: Counter[str] = Counter()
        both_read = threading.Barrier(2)

        def add(code: str) -> Callable[[Connection], None]:
            def op(conn: Connection) -> None:
                attempts[code] += 1
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                seen = conn.execute(select(func.count()).select_from(t.trust)).scalar_one()
                if attempts[code] == 1:
                    both_read.wait(timeout=30)
                conn.execute(
                    insert(t.trust).values(code=code, name=f"saw {seen}", created_at=now())
                )

            return op

        with ThreadPoolExecutor(max_workers=2) as pool:
            for f in [pool.submit(index.write, add(code)) for code in ("RA", "RB")]:
                f.result()
        assert {"RA", "RB"} <= {r.code for r in index.list_trusts()}
        assert sum(attempts.values()) >= 3, attempts  # one of them ran again
    finally:
        index.close()


# -- change feed ---------------------------------------------------------------------------


def test_change_feed_has_one_row_per_stored_instance_in_order(
    index: Index, ingestor: Ingestor, tmp_path: Path
) -> None:
    written = [write_instance(tmp_path / f"{i}.dcm", seed=i) for i in range(5)]
    for w in written:
        ingest(ingestor, w, trust="ZZB")
    ingest(ingestor, written[0], trust="ZZB")  # a duplicate changes nothing: no event
    events = index.events_since(0)
    assert [e["sop_instance_uid"] for e in events] == [w.sop_instance_uid for w in written]
    assert [e["study_uid"] for e in events] == [w.study_uid for w in written]
    assert all(e["kind"] == "instance.stored" for e in events)
    assert all(e["trust_code"] == "ZZB" for e in events)
    assert all(e["principal"] == "importer:contract-test@ZZB" for e in events)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    # A follower resumes after the last seq it saw.
    assert [e["sop_instance_uid"] for e in index.events_since(seqs[2])] == [
        w.sop_instance_uid for w in written[3:]
    ]
    assert index.events_since(seqs[-1]) == []
    assert len(index.events_since(0, limit=2)) == 2
