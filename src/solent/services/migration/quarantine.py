"""A source's copy of a SOP Instance UID the archive already holds with other bytes (R54,
scenario 2.9): decide what it is, keep the best copy served and every other copy kept.

* same pixels, header differs only in patient ID or name (an IEP copy relabelled): a duplicate,
  with what differs in the reason;
* same pixels, header differs in birth date, sex or NHS number: not a duplicate but an identity
  question; the copy is quarantined and the identity queue gets an item naming both;
* the same acquisition at another quality (lossless vs lossy, original vs derived, a more
  complete series): the best copy is served, the other kept as "superseded", both reported;
* other pixels: a UID collision; the archive's copy stays, this one is quarantined.

Kept copies live in the blob store itself (files or S3 alike), under keys of their own that
ingest never writes nor deletes, so they share the archive's durability and backups; the
``migration_quarantine`` row is what makes them referenced for ``solent check``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, func, insert, select, update

from solent.index import identity as id_store
from solent.index import schema as t
from solent.index.sql import Index, now
from solent.services.identity import IdentityService
from solent.services.migration.copies import (
    IDENTITY_ATTRIBUTES,
    Quality,
    content_digest,
    header_differences,
    quality_of,
    same_image,
    spool,
)
from solent.services.migration.model import Item, Source
from solent.storage import BlobStore, blob_key_for

HEADER_DIFFERS = "migration-header-differs"
SUPERSEDED = "superseded"  # quarantine status of a copy that lost to a better one


def quarantine_key(sha256_hex: str) -> str:
    """Where a kept copy lives in the blob store: shaped like a content key, so every backend
    and ``solent check`` accept it, but never equal to one (ingest's keys are the bare digest),
    so ingest's clean-up of a refused blob cannot delete a kept copy with the same bytes."""
    key = blob_key_for(sha256_hex)
    return f"{key[:6]}q{key[6:]}"


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fp:
        while chunk := fp.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Quarantine:
    def __init__(self, index: Index, store: BlobStore, identity: IdentityService) -> None:
        self._index = index
        self._store = store
        self._identity = identity

    def compare(
        self, src: Source, item: Item, path: Path, digest: str, replace: Callable[[], bool]
    ) -> tuple[str, str]:
        """The state and reason of a copy ingest refused as a conflict. ``replace`` stores it
        over the archive's copy (only called when this copy is the better one)."""
        stored = self._index.instance_digest(item.sop_uid)
        if stored is None:  # gone since ingest refused it: keep the copy, a person decides
            return self._collision(src, item, path, "")
        archive_sha, blob_key = stored
        with self._store.open(blob_key) as fp, spool(fp) as archived:
            if content_digest(archived) == digest:
                return self._same_pixels(src, item, path, archived, archive_sha)
            mine, theirs = quality_of(path), quality_of(archived)
            if same_image(archived, path, lossy=mine.lossy or theirs.lossy):
                return self._best_copy(src, item, path, archived, mine, theirs, replace)
        return self._collision(src, item, path, archive_sha)

    # -- same pixels -----------------------------------------------------------------------------

    def _same_pixels(
        self, src: Source, item: Item, path: Path, archived: Path, archive_sha: str
    ) -> tuple[str, str]:
        differ = header_differences(archived, path)
        said = ", ".join(f"{k} {b} (archive: {a})" for k, (a, b) in sorted(differ.items()))
        if not any(k in IDENTITY_ATTRIBUTES for k in differ):
            return "duplicate", (
                "already in the archive (same pixel data, other header"
                + (f": {said}" if said else "")
                + ")"
            )
        sha, key = self._keep(path)
        detail = (
            f"migration source {src.name} holds SOP Instance UID {item.sop_uid} with the "
            f"archive's pixel data but {said}; both copies kept (this one at {key}), the "
            "archive's stays served until a person decides which patient it is"
        )

        def op(conn: Connection) -> int | None:
            if not self._add_row(conn, src.name, item, archive_sha, sha, key, "open"):
                return None
            study = id_store.study_by_uid(conn, item.study_uid)
            return self._identity.add_work_item(
                HEADER_DIFFERS,
                detail,
                conn=conn,
                issuer=src.trust,
                local_id=item.patient_id,
                patient_pk=int(study["patient_pk"]) if study is not None else None,
            )

        work = self._index.write(op)
        return "quarantined", (
            f"same pixel data as the archive's copy but the header differs in {said}; "
            "both copies kept for review"
            + (f" (identity queue item {work})" if work is not None else "")
        )

    # -- quality variants (R54: keep the best copy) -----------------------------------------------

    def _best_copy(
        self,
        src: Source,
        item: Item,
        path: Path,
        archived: Path,
        mine: Quality,
        theirs: Quality,
        replace: Callable[[], bool],
    ) -> tuple[str, str]:
        supplier = self._supplier(item, src.name)
        have = self._series_count(src.name, item.series_uid)
        mine_said = f"{mine.describe()}, {have} instances of its series at {src.name}"
        if supplier is not None:
            other = self._series_count(supplier, item.series_uid)
            theirs_said = f"{theirs.describe()}, {other} instances of its series at {supplier}"
            better = (*mine.rank(), have) > (*theirs.rank(), other)
        else:
            theirs_said = f"{theirs.describe()}, received outside migration"
            better = False  # never displace what the archive received live
        if not better:
            sha, key = self._keep(path)
            stored = self._index.instance_digest(item.sop_uid)

            def keep(conn: Connection) -> None:
                self._add_row(
                    conn, src.name, item, stored[0] if stored else "", sha, key, SUPERSEDED
                )
                if supplier is not None:  # the served copy's row says why it stays
                    self._explain(
                        conn, supplier, item,
                        f"best copy: this one ({theirs_said}) kept over {src.name}'s "
                        f"({mine_said})",
                    )  # fmt: skip

            self._index.write(keep)
            return "duplicate", (
                f"best copy kept: the archive's ({theirs_said}) over this one ({mine_said}); "
                f"this copy kept at {key}"
            )
        assert supplier is not None
        old_sha, old_key = self._keep(archived)
        if not replace():
            self._unkeep(old_key)
            return "failed", "a better copy than the archive's could not replace it; retried"
        new_sha = _file_sha(path)

        def op(conn: Connection) -> None:
            self._add_row(conn, supplier, item, new_sha, old_sha, old_key, SUPERSEDED)
            self._explain(
                conn, supplier, item,
                f"superseded by a better copy from {src.name} ({mine_said}) over this one "
                f"({theirs_said}); this copy kept at {old_key}",
                state="duplicate",
            )  # fmt: skip

        self._index.write(op)
        return "stored", (
            f"best copy: this one ({mine_said}) replaced {supplier}'s ({theirs_said}), "
            f"which is kept at {old_key}"
        )

    @staticmethod
    def _explain(
        conn: Connection, source: str, item: Item, reason: str, *, state: str | None = None
    ) -> None:
        """Record on another source's row why its copy is (or no longer is) the one served."""
        c = t.migration_item.c
        values: dict[str, str | datetime] = {"reason": reason, "updated_at": now()}
        if state is not None:
            values["state"] = state
        conn.execute(
            update(t.migration_item)
            .where(c.source == source, c.sop_uid == item.sop_uid)
            .values(values)
        )

    def _supplier(self, item: Item, source: str) -> str | None:
        """The migration source whose copy the archive holds now, if migration stored it."""
        c = t.migration_item.c
        with self._index.read() as conn:
            row = conn.execute(
                select(c.source)
                .where(c.sop_uid == item.sop_uid, c.source != source, c.state == "stored")
                .order_by(c.source)
                .limit(1)
            ).first()
        return None if row is None else str(row[0])

    def _series_count(self, source: str, series_uid: str) -> int:
        c = t.migration_item.c
        with self._index.read() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(c.source == source, c.series_uid == series_uid)
                ).scalar_one()
            )

    # -- collisions --------------------------------------------------------------------------------

    def _collision(self, src: Source, item: Item, path: Path, archive_sha: str) -> tuple[str, str]:
        sha, key = self._keep(path)
        self._index.write(
            lambda conn: self._add_row(conn, src.name, item, archive_sha, sha, key, "open")
        )
        return "quarantined", (
            f"SOP Instance UID already in the archive with other content (archive sha256 "
            f"{archive_sha[:12]}..., source {sha[:12]}...); both copies kept"
        )

    # -- keeping copies ----------------------------------------------------------------------------

    def _keep(self, path: Path) -> tuple[str, str]:
        """Put a copy in the store under its quarantine key (durable before it is recorded)."""
        sha = _file_sha(path)
        key = quarantine_key(sha)
        self._store.put_file(key, path)
        return sha, key

    def _unkeep(self, key: str) -> None:
        """Drop a copy kept for a replacement that did not happen, unless a row names it."""
        q = t.migration_quarantine.c
        with self._index.read() as conn:
            named = conn.execute(select(q.pk).where(q.path == key).limit(1)).first()
        if named is None:
            self._store.delete(key)

    @staticmethod
    def _add_row(
        conn: Connection,
        source: str,
        item: Item,
        archive_sha: str,
        sha: str,
        key: str,
        status: str,
    ) -> bool:
        """Record a kept copy once per source and content; False when already recorded."""
        q = t.migration_quarantine.c
        found = conn.execute(
            select(q.pk).where(
                q.source == source, q.sop_uid == item.sop_uid, q.source_sha256 == sha
            )
        ).first()
        if found is not None:
            return False
        conn.execute(
            insert(t.migration_quarantine).values(
                source=source,
                sop_uid=item.sop_uid,
                study_uid=item.study_uid,
                archive_sha256=archive_sha,
                source_sha256=sha,
                path=key,
                status=status,
                at=now(),
            )
        )
        return True
