"""Blobs in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, moto).

A successful PUT in these stores is durable and atomic, which is what ``put_file`` promises.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from solent.errors import NotFound, StorageError
from solent.storage.base import check_key


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
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32),
        )

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def ensure_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._client.create_bucket(Bucket=self.bucket)

    def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        try:
            with path.open("rb") as fp:
                self._client.put_object(Bucket=self.bucket, Key=self._name(key), Body=fp)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot write blob to S3: {exc}") from exc
        if move:
            path.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot write blob to S3: {exc}") from exc

    def _get(self, key: str, **kw: Any) -> Any:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._name(key), **kw)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise NotFound(f"blob {key} is missing") from exc
            raise StorageError(f"cannot read blob from S3: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot read blob from S3: {exc}") from exc

    def open(self, key: str) -> BinaryIO:
        # Whole objects are instances (MBs); spool so callers get a seekable stream.
        body = self._get(key)["Body"]
        buf = io.BytesIO(body.read())
        return buf

    def open_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        data: bytes = self._get(key, Range=f"bytes={start}-{start + length - 1}")["Body"].read()
        if len(data) != length:
            raise StorageError(f"blob {key} is shorter than expected")
        return data

    def size(self, key: str) -> int:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as exc:
            raise NotFound(f"blob {key} is missing") from exc
        return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._name(key))
            return True
        except ClientError:
            return False

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._name(key))
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot delete blob from S3: {exc}") from exc

    def iter_keys(self) -> Iterator[tuple[str, float]]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"][len(self.prefix) :], obj["LastModified"].timestamp()

    def close(self) -> None:
        pass
