"""Copies of one instance compared: the content digest a migration checks copies by, and
what to do when a source's copy of a SOP Instance UID differs from the archive's.

Kept apart from the transfer loop because this is where R54's judgement lives (same
acquisition or UID collision), and a collision must never overwrite nor drop either copy.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import Connection, insert, select

from solent.index import schema as t
from solent.index.sql import Index, now
from solent.services.migration.model import Item, Source
from solent.storage import BlobStore


def content_digest(path: Path) -> str:
    """The SHA-256 a migration compares copies of one instance by (R54: pixel-data hashes).

    With pixel data: the hash of the Pixel Data value, so a copy whose header was relabelled
    (an IEP copy under another patient ID) is the same acquisition, while other pixels under
    the same SOP Instance UID are a collision. Without: the dataset after the File Meta group
    (copies that came by different routes differ in their meta header only).
    """
    ds = pydicom.dcmread(path, force=True, specific_tags=["PixelData"])
    pixels = ds.get("PixelData")  # by keyword: the value
    if isinstance(pixels, bytes) and pixels:
        return hashlib.sha256(pixels).hexdigest()
    with path.open("rb") as fp:
        head = fp.read(144)
        start = 0
        if len(head) >= 144 and head[128:132] == b"DICM":
            # (0002,0000) File Meta Information Group Length: UL, value at bytes 140..143.
            start = 144 + int.from_bytes(head[140:144], "little")
        fp.seek(start)
        h = hashlib.sha256()
        while chunk := fp.read(1 << 20):
            h.update(chunk)
        return h.hexdigest()


class spool:
    """A blob as a temporary local file (dataset_digest reads a path; blobs may be in S3)."""

    def __init__(self, fp: Any) -> None:
        self._tmp = tempfile.NamedTemporaryFile(prefix="solent-verify-", delete=False)  # noqa: SIM115
        while chunk := fp.read(1 << 20):
            self._tmp.write(chunk)
        self._tmp.close()

    def __enter__(self) -> Path:
        return Path(self._tmp.name)

    def __exit__(self, *exc: object) -> None:
        Path(self._tmp.name).unlink(missing_ok=True)


class Copies:
    def __init__(self, index: Index, store: BlobStore, quarantine_dir: Path) -> None:
        self._index = index
        self._store = store  # the archive's copy of a colliding instance is compared
        self.quarantine_dir = quarantine_dir

    def collision(self, src: Source, item: Item, path: Path, digest: str) -> tuple[str, str]:
        """Same SOP Instance UID, other bytes: a collision unless only the meta header differs.
        The source's copy is kept (fsynced) beside the archive's; nothing is overwritten."""
        stored = self._index.instance_digest(item.sop_uid)
        if stored is not None:
            with self._store.open(stored[1]) as fp, spool(fp) as archived:
                if content_digest(archived) == digest:
                    return "duplicate", "already in the archive (same pixel data, other header)"
        archive_sha = stored[0] if stored else ""
        dest = self.quarantine_dir / src.name / f"{item.sop_uid}.{digest[:16]}.dcm"
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        with dest.open("wb") as fp:
            fp.write(data)
            fp.flush()
            os.fsync(fp.fileno())
        sha = hashlib.sha256(data).hexdigest()

        def op(conn: Connection) -> None:
            q = t.migration_quarantine.c
            found = conn.execute(
                select(q.pk).where(
                    q.source == src.name, q.sop_uid == item.sop_uid, q.source_sha256 == sha
                )
            ).first()
            if found is None:
                conn.execute(
                    insert(t.migration_quarantine).values(
                        source=src.name,
                        sop_uid=item.sop_uid,
                        study_uid=item.study_uid,
                        archive_sha256=archive_sha,
                        source_sha256=sha,
                        path=str(dest),
                        status="open",
                        at=now(),
                    )
                )

        self._index.write(op)
        return "quarantined", (
            f"SOP Instance UID already in the archive with other content (archive sha256 "
            f"{archive_sha[:12]}..., source {sha[:12]}...); both copies kept"
        )
