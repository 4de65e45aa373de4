"""Blobs as files: temp file, fsync, atomic rename, fsync of the directory.

After ``put_file`` returns, a power cut cannot lose the blob nor leave half of it under its key.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from solent.errors import NotFound, StorageError
from solent.storage.base import check_key, is_key


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.url = self.root.as_uri()
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()
        self._dir_lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        # Every new directory entry is made durable before a blob is placed under it: "cd" in
        # "ab/", and "ab" in the root only when "ab" is new too (after the first 256 blobs it
        # never is: one fsync per new directory saved). The lock keeps another thread from
        # using a directory before its creator has synced it.
        with self._dir_lock:
            if not directory.exists():
                top_is_new = not directory.parent.exists()
                directory.mkdir(parents=True, exist_ok=True)
                fsync_dir(directory.parent)
                if top_is_new:
                    fsync_dir(directory.parent.parent)
            self._known_dirs.add(directory)

    def prepare(self, key: str) -> None:
        """Create (durably) the directory ``key`` will go to, ahead of ``put_file``: a receiver
        calls it while it still parses, so the directory fsyncs overlap that work."""
        self._ensure_dir(self._path(key).parent)

    def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        target = self._path(key)
        self._ensure_dir(target.parent)
        try:
            if move and path.stat().st_dev == self.root.stat().st_dev:
                with path.open("rb+") as fp:
                    os.fsync(fp.fileno())
                os.replace(path, target)
            else:
                fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
                with os.fdopen(fd, "wb") as out, path.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp_name, target)
            fsync_dir(target.parent)
        except OSError as exc:
            raise StorageError(f"cannot write blob: {exc.strerror}") from exc
        if move:  # consumed whichever way it went, as with S3: callers need not clean up
            path.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        self._ensure_dir(target.parent)
        try:
            fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, target)
            fsync_dir(target.parent)
        except OSError as exc:
            raise StorageError(f"cannot write blob: {exc.strerror}") from exc

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise NotFound(f"blob {key} is missing") from exc

    def open_range(self, key: str, start: int, length: int) -> bytes:
        with self.open(key) as fp:
            fp.seek(start)
            data = fp.read(length)
        if len(data) != length:
            raise StorageError(f"blob {key} is shorter than expected")
        return data

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"blob {key} is missing") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def iter_keys(self) -> Iterator[tuple[str, float]]:
        for a in sorted(self.root.iterdir()):
            if a.name.startswith(".") or not a.is_dir():
                continue
            for b in sorted(a.iterdir()):
                if not b.is_dir():
                    continue
                for f in sorted(b.iterdir()):
                    key = f"{a.name}/{b.name}/{f.name}"
                    if not is_key(key):  # stray files are not ours to report
                        continue
                    try:
                        yield key, f.stat().st_mtime
                    except FileNotFoundError:  # deleted while we listed
                        continue

    def clean_temp(self, older_than: float) -> int:
        """Remove spool files left by a crash; returns how many."""
        removed = 0
        for f in self._tmp.iterdir():
            if f.stat().st_mtime < older_than:
                f.unlink(missing_ok=True)
                removed += 1
        return removed

    def close(self) -> None:
        pass
