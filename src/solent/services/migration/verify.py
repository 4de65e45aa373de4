"""The verification report (R55): source against archive per instance, counts per verdict,
the quarantine, which copy was chosen where sources disagreed (R54), and what still waits.

The archive's hash is recomputed from the stored blob, never taken from the index, so the
report proves what is on disk (or in S3) rather than what was recorded.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select

from solent.domain.principal import Principal
from solent.index import schema as t
from solent.index.sql import Index
from solent.services.access import Permission
from solent.services.migration.copies import content_digest, spool
from solent.services.migration.model import EXCLUDED, plain, require
from solent.services.migration.quarantine import SUPERSEDED
from solent.storage import BlobStore

# Verdicts that need no sign-off: the archive holds this copy, or a better one of it.
_IN_ARCHIVE = frozenset({"verified", "superseded"})
#: Excluded: left out by a person, with a reason (Transfer.exclude).
_RESOLVED = _IN_ARCHIVE | {EXCLUDED}


class Verification:
    def __init__(self, index: Index, store: BlobStore) -> None:
        self._index = index
        self._store = store

    def verification(self, principal: Principal, source: str) -> dict[str, Any]:
        """Source vs archive, per instance: the source's content hash against the archived
        file's, counts per state, quarantine, and what waits on identity and why."""
        require(principal, Permission.STORE)
        c, ic = t.migration_item.c, t.instance.c
        with self._index.read() as conn:
            rows = conn.execute(
                select(
                    t.migration_item,
                    ic.sha256.label("archive_file_sha256"),
                    ic.blob_key.label("archive_blob_key"),
                )
                .select_from(
                    t.migration_item.outerjoin(t.instance, ic.sop_instance_uid == c.sop_uid)
                )
                .where(c.source == source)
                .order_by(c.study_uid, c.series_uid, c.sop_uid)
            ).mappings()
            items = [dict(r) for r in rows]
            q = t.migration_quarantine.c
            quarantine = [
                {k: plain(v) for k, v in r.items()}
                for r in conn.execute(
                    select(t.migration_quarantine).where(q.source == source).order_by(q.pk)
                ).mappings()
            ]
            # SOPs where a best copy was chosen (R54), whichever source's copy lost.
            chosen = {
                str(sop)
                for (sop,) in conn.execute(
                    select(q.sop_uid)
                    .join(t.migration_item, c.sop_uid == q.sop_uid)
                    .where(c.source == source, q.status == SUPERSEDED)
                )
            }
        out_items = []
        for r in items:
            archive_sha = None
            if r["archive_blob_key"]:
                with (
                    self._store.open(r["archive_blob_key"]) as fp,
                    spool(fp) as archived,
                ):
                    archive_sha = content_digest(archived)
            verdict = r["state"]
            if r["state"] in ("stored", "duplicate"):
                if archive_sha is None:
                    verdict = "missing"
                elif archive_sha != r["source_sha256"]:
                    # The archive serves another source's better copy of this instance.
                    verdict = "superseded" if r["sop_uid"] in chosen else "hash-mismatch"
                else:
                    verdict = "verified"
            out_items.append(
                {
                    "study_uid": r["study_uid"],
                    "series_uid": r["series_uid"],
                    "sop_uid": r["sop_uid"],
                    "patient_id": r["patient_id"],
                    "state": r["state"],
                    "verdict": verdict,
                    "source_sha256": r["source_sha256"],
                    "archive_sha256": archive_sha,
                    "reason": r["reason"],
                    "locator": r["locator"],  # a folder source's file: which one to look at
                }
            )
        counts: dict[str, int] = defaultdict(int)
        for i in out_items:
            counts[i["verdict"]] += 1
        studies = {i["study_uid"] for i in out_items}
        series = {i["series_uid"] for i in out_items}
        in_archive_studies = {i["study_uid"] for i in out_items if i["verdict"] in _IN_ARCHIVE}
        unresolved = sum(n for k, n in counts.items() if k not in _RESOLVED)
        return {
            "source": source,
            "instances": len(out_items),
            "studies": len(studies),
            "series": len(series),
            "studies_in_archive": len(in_archive_studies),
            "counts": dict(sorted(counts.items())),
            "unresolved": unresolved,
            "items": out_items,
            "quarantine": quarantine,
            # Which copy the archive serves where several sources held one, and why (R54).
            "best_copies": [
                {k: i[k] for k in ("sop_uid", "verdict", "reason")}
                for i in out_items
                if i["sop_uid"] in chosen
            ],
        }
