"""One contract for every BlobStore: the filesystem and S3 (a moto server over real HTTP).

Whatever backend a deployment picks, ingest, retrieval and `solent check` see the same
behaviour: content-addressed keys, durable puts, ranges, NotFound for missing keys, and no
caller-supplied name ever steering where bytes go.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from solent.errors import InvalidInput, NotFound, StorageError
from solent.settings import Settings
from solent.storage import BlobStore, blob_key_for, open_blob_store
from solent.storage.s3 import S3BlobStore
from tests.conftest import S3Server


def _key(data: bytes) -> str:
    return blob_key_for(hashlib.sha256(data).hexdigest())


@pytest.fixture(params=["filesystem", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "filesystem":
        s = open_blob_store((tmp_path / "blobs").as_uri())
    else:
        s3: S3Server = request.getfixturevalue("s3_server")
        s = open_blob_store(
            f"s3://solent-contract-{uuid.uuid4().hex[:12]}/some/prefix",
            s3_endpoint_url=s3.endpoint_url,
            s3_access_key_id="testing",
            s3_secret_access_key="testing",
        )
        assert isinstance(s, S3BlobStore)
        s.ensure_bucket()
    yield s
    s.close()


def _file(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / f"in-{uuid.uuid4().hex}"
    p.write_bytes(data)
    return p


def test_put_bytes_then_read_whole_and_ranges(store: BlobStore) -> None:
    data = os.urandom(70_000)
    key = _key(data)
    assert not store.exists(key)
    store.put_bytes(key, data)
    assert store.exists(key)
    assert store.size(key) == len(data)
    with store.open(key) as fp:
        assert fp.read() == data
        fp.seek(1000)  # callers (WADO, frames) rely on a seekable stream
        assert fp.read(10) == data[1000:1010]
    assert store.open_range(key, 0, 1) == data[:1]
    assert store.open_range(key, 12_345, 4096) == data[12_345 : 12_345 + 4096]
    assert store.open_range(key, len(data) - 7, 7) == data[-7:]


def test_put_file_copy_keeps_the_source(store: BlobStore, tmp_path: Path) -> None:
    data = b"DICM" * 5000
    src = _file(tmp_path, data)
    store.put_file(_key(data), src)
    assert src.read_bytes() == data
    with store.open(_key(data)) as fp:
        assert fp.read() == data


def test_put_file_move_stores_the_bytes(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(10_000)
    src = _file(tmp_path, data)
    store.put_file(_key(data), src, move=True)
    with store.open(_key(data)) as fp:
        assert fp.read() == data
    # A moved spool file is consumed (renamed or uploaded then removed), never left twice.
    assert not src.exists()


def test_put_of_the_same_content_twice_is_idempotent(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(5000)
    key = _key(data)
    store.put_bytes(key, data)
    store.put_file(key, _file(tmp_path, data))
    store.put_file(key, _file(tmp_path, data), move=True)
    assert store.size(key) == len(data)
    assert [k for k, _ in store.iter_keys()] == [key]


def test_missing_key_is_not_found(store: BlobStore) -> None:
    key = _key(b"never stored")
    assert not store.exists(key)
    with pytest.raises(NotFound):
        store.open(key)
    with pytest.raises(NotFound):
        store.open_range(key, 0, 10)
    with pytest.raises(NotFound):
        store.size(key)
    store.delete(key)  # deleting what is not there is not an error (repair may race)


def test_delete_removes_only_that_blob(store: BlobStore) -> None:
    a, b = b"first blob" * 100, b"second blob" * 100
    store.put_bytes(_key(a), a)
    store.put_bytes(_key(b), b)
    store.delete(_key(a))
    assert not store.exists(_key(a))
    with pytest.raises(NotFound):
        store.open(_key(a))
    assert store.exists(_key(b))
    assert [k for k, _ in store.iter_keys()] == [_key(b)]


def test_iter_keys_lists_every_blob_with_a_recent_mtime(store: BlobStore) -> None:
    import time

    blobs = [os.urandom(100 + i) for i in range(5)]
    before = time.time() - 120  # S3 LastModified has one-second resolution; clocks may differ
    for data in blobs:
        store.put_bytes(_key(data), data)
    listed = dict(store.iter_keys())
    assert sorted(listed) == sorted(_key(d) for d in blobs)
    assert all(before < mtime < time.time() + 120 for mtime in listed.values())


BAD_KEYS = [
    "../x",
    "../../etc/passwd",
    "ab/cd/../../../../etc/passwd",
    "/etc/passwd",
    "/ab/cd/" + "0" * 64,
    "1.2.840.113619.2.55.3.604688119.868.1234567890.123",  # a raw SOP Instance UID
    "ab/cd/1.2.840.113619.2.55.3",
    "AB/CD/" + "A" * 64,
    "ab/cd/" + "0" * 64 + "\n",
    "ab/cd/" + "0" * 64 + "/x",
    "ab\\cd\\" + "0" * 64,
    "",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_not_made_by_blob_key_for_are_rejected(
    store: BlobStore, key: str, tmp_path: Path
) -> None:
    src = _file(tmp_path, b"payload")
    for call in (
        lambda: store.put_bytes(key, b"payload"),
        lambda: store.put_file(key, src),
        lambda: store.open(key),
        lambda: store.open_range(key, 0, 1),
        lambda: store.size(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(InvalidInput):
            call()
    assert src.read_bytes() == b"payload"
    assert list(store.iter_keys()) == []


def test_blob_key_for_needs_a_sha256_digest() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert blob_key_for(digest) == f"{digest[:2]}/{digest[2:4]}/{digest}"
    for bad in ("1.2.3.4", digest[:-1], digest.upper(), "../" + digest[3:], digest + "\n"):
        with pytest.raises(InvalidInput):
            blob_key_for(bad)


def test_filesystem_blobs_stay_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    s = open_blob_store(root.as_uri())
    data = b"inside"
    s.put_bytes(_key(data), data)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [root / _key(data)]
    # Stray files (an operator's note, a half-copied backup) are not reported as blobs.
    (root / "README").write_text("not a blob")
    (root / _key(data).split("/")[0] / "stray").write_text("not a blob")
    assert [k for k, _ in s.iter_keys()] == [_key(data)]


def test_s3_store_ignores_foreign_objects_and_works_in_a_fresh_bucket(
    s3_server: S3Server,
) -> None:
    bucket = f"solent-fresh-{uuid.uuid4().hex[:12]}"
    s = open_blob_store(
        f"s3://{bucket}/pacs",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
    )
    assert isinstance(s, S3BlobStore)
    s.ensure_bucket()
    s.ensure_bucket()  # a second node starting finds the bucket and leaves it alone
    data = b"object"
    s.put_bytes(_key(data), data)
    client = s3_server.client()
    names = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert names == ["pacs/" + _key(data)]
    client.put_object(Bucket=bucket, Key="pacs/notes.txt", Body=b"x")
    client.put_object(Bucket=bucket, Key="other-app/" + _key(b"y"), Body=b"y")
    assert [k for k, _ in s.iter_keys()] == [_key(data)]


def test_s3_store_unreachable_is_an_error_not_a_missing_blob() -> None:
    """`solent check --repair` deletes index rows whose blob is missing: an outage must not
    look like that."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once we leave: connections are refused
    s = open_blob_store(
        "s3://nowhere/prefix",
        s3_endpoint_url=f"http://127.0.0.1:{port}",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
    )
    key = _key(b"anything")
    for call in (lambda: s.exists(key), lambda: s.size(key), lambda: list(s.iter_keys())):
        with pytest.raises(StorageError):
            call()


def test_filesystem_move_across_devices_copies_durably_and_consumes(tmp_path: Path) -> None:
    """A spool directory on another filesystem (tmpfs) cannot be renamed into the store."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem to move from")
    s = open_blob_store((tmp_path / "blobs").as_uri())
    data = os.urandom(3000)
    src = shm / f"solent-test-{uuid.uuid4().hex}"
    src.write_bytes(data)
    try:
        s.put_file(_key(data), src, move=True)
        assert not src.exists()
        with s.open(_key(data)) as fp:
            assert fp.read() == data
        assert list((tmp_path / "blobs" / ".tmp").iterdir()) == []
    finally:
        src.unlink(missing_ok=True)


def test_an_archive_on_a_fresh_s3_bucket_creates_it_and_stores(
    s3_settings: Settings, s3_server: S3Server, tmp_path: Path
) -> None:
    """`build_archive` sets the bucket up like the schema: a new deployment just starts."""
    from solent.app import build_archive
    from solent.domain.outcomes import Outcome
    from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
    from solent.services.check import check_archive
    from tests.contract.synthetic import write_instance

    bucket = s3_settings.storage_url[len("s3://") :].split("/")[0]
    client = s3_server.client()
    assert bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]
    archive = build_archive(s3_settings)
    try:
        archive.index.add_trust("ZZA", "Trust A")
        w = write_instance(tmp_path / "one.dcm")
        who = Principal(PrincipalKind.IMPORTER, "contract-test", "ZZA")
        result = archive.ingestor.ingest_file(w.path, who, Provenance(Channel.IMPORT))
        assert result.outcome is Outcome.STORED
        assert archive.store.exists(blob_key_for(w.sha256))
        report = check_archive(archive.index, archive.store)
        assert report.clean and (report.instances, report.blobs) == (1, 1)
    finally:
        archive.close()
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == [
        "blobs/" + blob_key_for(w.sha256)
    ]


def test_place_file_consumes_the_spool_and_is_readable_after_wait(
    store: BlobStore, tmp_path: Path
) -> None:
    data = os.urandom(200_000)
    key = _key(data)
    spool = _file(tmp_path, data)
    placement = store.place_file(key, spool)
    placement.wait()
    assert not spool.exists()
    with store.open(key) as fp:
        assert fp.read() == data


def test_place_file_over_an_existing_key_keeps_one_whole_blob(
    store: BlobStore, tmp_path: Path
) -> None:
    """The same content placed twice (a re-sent instance, or a crash's leftover under the
    key): the second placement replaces it whole, never leaving a half-written blob."""
    data = os.urandom(50_000)
    key = _key(data)
    store.put_bytes(key, data)
    second = _file(tmp_path, data)
    store.place_file(key, second).wait()
    assert not second.exists()
    assert store.size(key) == len(data)
    with store.open(key) as fp:
        assert fp.read() == data
    assert [k for k, _ in store.iter_keys()] == [key]


def test_open_streams_with_seeks_in_bounded_memory(store: BlobStore, tmp_path: Path) -> None:
    """A whole-blob stream reads what the caller asks: a 24 MB blob read in 64 KB slices
    never holds more than a few MB (S3: the GET body streams; seeks open ranged GETs)."""
    import tracemalloc

    data = os.urandom(24 << 20)
    key = _key(data)
    store.put_file(key, _file(tmp_path, data), move=True)
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        with store.open(key) as fp:
            assert fp.seek(0, os.SEEK_END) == len(data)
            fp.seek(0)
            assert fp.read(1000) == data[:1000]
            fp.seek(len(data) - 10)
            assert fp.read() == data[-10:]
            fp.seek(5)
            assert fp.read(10) == data[5:15]
            fp.seek(300_000)  # a forward skip within one body
            assert fp.read(7) == data[300_000:300_007]
            fp.seek(0)
            while chunk := fp.read(64 << 10):
                digest.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert peak < 4 << 20, f"reading the blob held {peak >> 20} MB at once"


def _cached(store: BlobStore, key: str, start: int, length: int) -> bytes | None:
    buf = bytearray(length)
    return bytes(buf) if store.cached_range_into(key, start, memoryview(buf)) else None


def test_cached_range_is_the_range_or_nothing(store: BlobStore) -> None:
    """What an event loop may read: the same bytes as open_range, or nothing (never a wait
    for the network; never a wrong or short answer, nor an error for a missing blob)."""
    data = os.urandom(70_000)
    key = _key(data)
    store.put_bytes(key, data)
    store.open_range(key, 1000, 5000)  # in the page cache now (filesystem)
    got = _cached(store, key, 1000, 5000)
    if isinstance(store, S3BlobStore):
        assert got is None
    else:
        assert got == data[1000:6000]
    assert _cached(store, key, 69_000, 5000) is None  # past the end: open_range's error
    assert _cached(store, _key(b"absent"), 0, 10) is None


def test_cached_range_does_not_wait_for_the_disk(tmp_path: Path) -> None:
    store = open_blob_store((tmp_path / "blobs").as_uri())
    data = os.urandom(256 * 1024)
    key = _key(data)
    store.put_bytes(key, data)
    path = next(p for p in (tmp_path / "blobs").rglob("*") if p.is_file())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # out of the page cache
    finally:
        os.close(fd)
    assert _cached(store, key, 0, len(data)) is None
    assert store.open_range(key, 0, len(data)) == data
    assert _cached(store, key, 0, len(data)) == data
