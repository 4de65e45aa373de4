"""The BlobStore port. Keys are derived from content hashes, never from DICOM values."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from solent.errors import ConfigurationError, InvalidInput

_KEY = re.compile(r"[a-z0-9]{2}/[a-z0-9]{2}/[a-z0-9]{16,128}")


def blob_key_for(sha256_hex: str) -> str:
    """Content-addressed key: a re-sent identical instance lands on the same key."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256_hex):
        raise InvalidInput("blob key needs a hex SHA-256 digest")
    return f"{sha256_hex[:2]}/{sha256_hex[2:4]}/{sha256_hex}"


def is_key(name: str) -> bool:
    """True for names shaped like our keys; listings skip anything else in the store."""
    return _KEY.fullmatch(name) is not None


def check_key(key: str) -> str:
    """Reject anything that is not a key we made, so no caller value can steer a path."""
    if not _KEY.fullmatch(key):  # fullmatch: "$" would let a trailing newline through
        raise InvalidInput(f"invalid blob key {key[:80]!r}")
    return key


class Placement(Protocol):
    """A blob being made durable: ``wait`` returns once it survives a crash, or raises
    StorageError. Ingest runs its index statements meanwhile and commits only after ``wait``."""

    def wait(self) -> None: ...


class Placed:
    """A Placement that is durable already (stores whose put is synchronous)."""

    def wait(self) -> None:
        return None


PLACED = Placed()


class BlobStore(Protocol):
    """Durable byte storage. ``put_file`` returns only when the bytes survive a crash."""

    url: str

    def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        """Store the file at ``path`` under ``key``; with ``move`` the file may be consumed."""

    def place_file(self, key: str, path: Path) -> Placement:
        """Move the file at ``path`` (consumed) under ``key`` and START making it durable;
        the bytes count as stored only after the Placement's ``wait``."""

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def open(self, key: str) -> BinaryIO:
        """A readable, seekable stream of the whole blob."""

    def open_range(self, key: str, start: int, length: int) -> bytes: ...

    def cached_range_into(self, key: str, start: int, into: memoryview) -> bool:
        """Fill ``into`` with the blob's bytes from ``start`` when they can be had without
        waiting for a device or the network (in the page cache); False otherwise, and for any
        doubt (then use open_range)."""

    def size(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def iter_keys(self) -> Iterator[tuple[str, float]]:
        """Every key with its modification time (seconds since the epoch), for `solent check`."""

    def close(self) -> None: ...


def open_blob_store(
    url: str,
    *,
    s3_endpoint_url: str = "",
    s3_region: str = "us-east-1",
    s3_access_key_id: str = "",
    s3_secret_access_key: str = "",
    s3_timeout_seconds: float = 10.0,
) -> BlobStore:
    if url.startswith("file://"):
        from solent.storage.filesystem import FileBlobStore

        return FileBlobStore(Path(url[len("file://") :]))
    if url.startswith("s3://"):
        from solent.storage.s3 import S3BlobStore

        bucket, _, prefix = url[len("s3://") :].partition("/")
        return S3BlobStore(
            bucket,
            prefix,
            endpoint_url=s3_endpoint_url or None,
            region=s3_region,
            access_key_id=s3_access_key_id or None,
            secret_access_key=s3_secret_access_key or None,
            timeout=s3_timeout_seconds,
        )
    raise ConfigurationError(
        f"unsupported storage URL {url!r}: use file:///path or s3://bucket/prefix"
    )
