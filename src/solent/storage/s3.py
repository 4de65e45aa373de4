"""Blobs in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, moto).

A successful PUT in these stores is durable and atomic, which is what ``put_file`` promises.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from solent.errors import NotFound, StorageError
from solent.storage.base import PLACED, Placement, check_key, is_key

_MISSING = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in _MISSING


ATTEMPTS = 3  # tries of one S3 request (standard retry mode: transient errors, backoff)
READ_BUFFER = 256 << 10
SKIP_BY_READING = 256 << 10  # a forward seek shorter than this reads on instead of a new GET


class _ObjectReader(io.RawIOBase):
    """An S3 object as a seekable raw stream, read through the GET response's streaming body.

    Hand-written because botocore's StreamingBody cannot seek and the callers (WADO, C-GET,
    header splice) seek: reading the object sequentially costs one GET; a seek backwards or far
    ahead drops the body and opens a ranged GET from the new position when next read. Memory is
    what the caller asks per read, never the object.
    """

    def __init__(self, get: Callable[..., Any], key: str, first: Any) -> None:
        super().__init__()
        self._get = get
        self._key = key
        self._size = int(first["ContentLength"])
        self._body: Any = first["Body"]
        self._body_pos = 0
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def _drop_body(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
            self._body = None

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._size - self._pos)
        if want <= 0:
            return 0
        gap = self._pos - self._body_pos
        if self._body is None or not 0 <= gap <= SKIP_BY_READING:
            self._drop_body()
            self._body = self._get(self._key, Range=f"bytes={self._pos}-")["Body"]
            self._body_pos = self._pos
        try:
            while self._body_pos < self._pos:  # a short skip forward: read past it
                skipped = self._body.read(min(self._pos - self._body_pos, 1 << 16))
                if not skipped:
                    raise StorageError(f"blob {self._key} is shorter than expected")
                self._body_pos += len(skipped)
            data = self._body.read(want)
        except (BotoCoreError, OSError) as exc:
            self._drop_body()
            raise StorageError(f"cannot read blob from S3: {exc}") from exc
        if not data:
            raise StorageError(f"blob {self._key} is shorter than expected")
        n = len(data)
        view[:n] = data
        self._pos += n
        self._body_pos += n
        return n

    def close(self) -> None:
        self._drop_body()
        super().close()


class S3BlobStore:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            # botocore's defaults (60 s to connect and per read, 5 tries) kept a C-STORE
            # waiting for minutes on an endpoint that hangs: the modality gave up first (DCMTK
            # after 60 s) with no status. Bounded, the operation fails as "storage unavailable".
            config=Config(
                connect_timeout=timeout,
                read_timeout=timeout,
                retries={"max_attempts": ATTEMPTS, "mode": "standard"},
                max_pool_connections=32,
            ),
        )

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def ensure_bucket(self) -> None:
        """Create the bucket on first start; an existing one (or no right to look) is left."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if not _missing(exc):
                return  # e.g. 403: may still be writable; the first PUT will say if not
        except BotoCoreError as exc:
            raise StorageError(f"cannot reach the S3 endpoint: {exc}") from exc
        kw: dict[str, Any] = {}
        region = self._client.meta.region_name
        if region and region != "us-east-1":
            kw["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(Bucket=self.bucket, **kw)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StorageError(f"cannot create S3 bucket {self.bucket}: {exc}") from exc

    def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        try:
            with path.open("rb") as fp:
                self._client.put_object(Bucket=self.bucket, Key=self._name(key), Body=fp)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot write blob to S3: {exc}") from exc
        if move:
            path.unlink(missing_ok=True)

    def place_file(self, key: str, path: Path) -> Placement:
        """A PUT is durable when it returns: nothing left to wait for."""
        self.put_file(key, path, move=True)
        return PLACED

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot write blob to S3: {exc}") from exc

    def _get(self, key: str, **kw: Any) -> Any:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._name(key), **kw)
        except ClientError as exc:
            if _missing(exc):
                raise NotFound(f"blob {key} is missing") from exc
            raise StorageError(f"cannot read blob from S3: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot read blob from S3: {exc}") from exc

    def open(self, key: str) -> BinaryIO:
        """A seekable stream that reads the object as the caller does (bounded memory for a
        300 MB instance): see _ObjectReader."""
        reader = _ObjectReader(self._get, key, self._get(key))
        return cast(BinaryIO, io.BufferedReader(reader, buffer_size=READ_BUFFER))

    def cached_range_into(self, key: str, start: int, into: memoryview) -> bool:
        return False  # every read is a request over the network

    def open_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        data: bytes = self._get(key, Range=f"bytes={start}-{start + length - 1}")["Body"].read()
        if len(data) != length:
            raise StorageError(f"blob {key} is shorter than expected")
        return data

    def _head(self, key: str) -> Any:
        """The object's metadata, or None when it does not exist. Other errors are errors:
        `solent check --repair` must never take an unreachable store for a missing blob."""
        try:
            return self._client.head_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise StorageError(f"cannot read blob from S3: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot read blob from S3: {exc}") from exc

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise NotFound(f"blob {key} is missing")
        return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._name(key))
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot delete blob from S3: {exc}") from exc

    def iter_keys(self) -> Iterator[tuple[str, float]]:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(self.prefix) :]
                    if is_key(key):  # other objects sharing the bucket are not ours
                        yield key, obj["LastModified"].timestamp()
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot list blobs in S3: {exc}") from exc

    def close(self) -> None:
        pass
