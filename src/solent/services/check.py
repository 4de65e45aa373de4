"""`solent check`: find (and repair) index rows without blobs and blobs without rows.

The CLI reaches it through ``ArchiveCheck`` (``Services.check``), which takes the caller:
only the operator or an administrator may run it, and a repair that deletes instance rows
writes one ``delete`` audit record per instance, naming its patient, in the deleting
transaction (issue 11: nobody changes patient data without a record of it).

Ingest writes the blob before the index row, so a crash can leave an unindexed blob (harmless,
never served) but never an index row pointing at nothing; this check proves both. Nodes keep
ingesting while it runs: a row whose blob the listing did not show is asked for again before it
counts as missing, and an orphan is re-checked against the index before it is deleted. On PostgreSQL
it also compares the kept access rule (patient_visibility, migration 0009) with the rule: a bulk
load with the triggers off, or a restore of part of the tables, would leave it stale.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select, text

from solent.domain.principal import Principal
from solent.index import schema as t
from solent.index.rejection import rejected_blob_keys
from solent.index.sql import Index
from solent.services.access import AccessService, Permission
from solent.services.audit import AuditAction, AuditTrail, audit_fields
from solent.storage import BlobStore

DeletionAudit = Callable[[Connection, str, str], object]


@dataclass
class CheckReport:
    instances: int = 0
    blobs: int = 0
    missing_blobs: list[dict[str, str]] = field(default_factory=list)
    size_mismatches: list[dict[str, Any]] = field(default_factory=list)
    orphan_blobs: list[str] = field(default_factory=list)
    young_orphans: int = 0
    #: Rows of the access rule not kept (records hidden) and kept rows it does not give
    #: (records shown that should not be); PostgreSQL only.
    visibility_drift: dict[str, int] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        drift = any(self.visibility_drift.values())
        return not (self.missing_blobs or self.size_mismatches or self.orphan_blobs or drift)

    def as_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "instances": self.instances,
            "blobs": self.blobs,
            "missing_blobs": self.missing_blobs,
            "size_mismatches": self.size_mismatches,
            "orphan_blobs": self.orphan_blobs,
            "young_orphans_ignored": self.young_orphans,
            "visibility_drift": self.visibility_drift,
            "repaired": self.repaired,
        }


class ArchiveCheck:
    """The index against the blob store, for the operator (`solent check`): the caller is
    checked and every repair is audited; the CLI never holds the index or the store."""

    def __init__(
        self, index: Index, store: BlobStore, access: AccessService, audit: AuditTrail
    ) -> None:
        self._index = index
        self._store = store
        self._access = access
        self._audit = audit

    def run(
        self, principal: Principal, *, repair: bool = False, grace_seconds: float = 0
    ) -> CheckReport:
        """Compare (and with ``repair`` put right); administrators and the operator only."""
        what = "repairing the archive" if repair else "checking the archive"
        self._access.require(principal, Permission.ADMIN, what)

        def deleted(conn: Connection, sop_uid: str, study_uid: str) -> None:
            AuditTrail.append_in(
                conn,
                audit_fields(
                    principal,
                    AuditAction.DELETE,
                    study_uid=study_uid,
                    detail={
                        "repair": "row without blob",
                        "sop_instance_uid": sop_uid,
                        "why": "its blob is missing from the store (solent check --repair)",
                    },
                ),
            )

        report = check_archive(
            self._index,
            self._store,
            repair=repair,
            grace_seconds=grace_seconds,
            on_delete=deleted,
        )
        if repair:
            self._audit.record(
                principal,
                AuditAction.DELETE,
                detail={
                    "repair": report.repaired,
                    "orphan_blobs": report.orphan_blobs[:100],
                    "rows_without_blob": len(report.missing_blobs),
                },
            )
        return report


def check_archive(
    index: Index,
    store: BlobStore,
    *,
    repair: bool = False,
    grace_seconds: float = 0,
    on_delete: DeletionAudit | None = None,
) -> CheckReport:
    """Compare the index with the store. Orphans younger than ``grace_seconds`` may be in flight.
    ``on_delete(conn, sop_uid, study_uid)`` audits each instance row removed, in its transaction
    (``ArchiveCheck`` passes it; tests and benchmarks holding the index call this directly)."""
    report = CheckReport()
    stored: dict[str, float] = dict(store.iter_keys())
    report.blobs = len(stored)
    # Copies a migration kept (quarantined or superseded, R54) and held instances live there too.
    kept = _kept_copies(index)
    referenced: set[str] = set(kept)
    for sop_uid, key, size in index.iter_blob_refs():
        report.instances += 1
        referenced.add(key)
        # Not listed: missing, or stored (by a node still serving) after the listing passed
        # its key. Asked again, so a repair never removes the rows of an acknowledged instance.
        if key not in stored and not store.exists(key):
            report.missing_blobs.append({"sop_instance_uid": sop_uid, "blob_key": key})
        elif hasattr(store, "root") and store.size(key) != size:
            report.size_mismatches.append(
                {"sop_instance_uid": sop_uid, "blob_key": key, "expected": size}
            )
    report.visibility_drift = _visibility_drift(index)
    horizon = time.time() - grace_seconds
    for key, mtime in stored.items():
        if key not in referenced:
            if mtime > horizon:
                report.young_orphans += 1
            else:
                report.orphan_blobs.append(key)
    if repair:
        kept_now = _kept_copies(index)  # re-check: a writer may have indexed or kept it since
        for key in report.orphan_blobs:
            if not index.blob_referenced(key) and key not in kept_now:
                store.delete(key)
        for item in report.missing_blobs:
            sop = item["sop_instance_uid"]
            audit = _bound(on_delete, sop) if on_delete is not None else None
            index.delete_instance_rows(sop, audit=audit)
        cleaner = getattr(store, "clean_temp", None)
        temp = cleaner(horizon) if cleaner else 0
        report.repaired = {
            "orphan_blobs_deleted": len(report.orphan_blobs),
            "rows_without_blob_removed": len(report.missing_blobs),
            "temp_files_removed": temp,
        }
        if any(report.visibility_drift.values()):
            index.write(lambda conn: conn.execute(text("SELECT solent_visibility_rebuild()")))
            report.repaired["visibility_rebuilt"] = 1
    return report


def _bound(hook: DeletionAudit, sop_uid: str) -> Callable[[Connection, str], object]:
    return lambda conn, study_uid: hook(conn, sop_uid, study_uid)


def _visibility_drift(index: Index) -> dict[str, int]:
    if index.dialect != "postgresql":
        return {}
    with index.read() as conn:
        missing, extra = conn.execute(text("SELECT * FROM solent_visibility_drift()")).one()
    return {"missing": int(missing), "extra": int(extra)}


def _kept_copies(index: Index) -> set[str]:
    """Blob keys of the copies kept outside the index's instances: migration's quarantine and
    the instances still held for identity reconciliation and those an IOCM note withdrew (their
    rows name them). A released
    or discarded instance's copy is removed by its decision; one a failure left behind is an
    orphan like any other, for ``--repair``."""
    h = t.held_instance.c
    with index.read() as conn:
        kept = {str(k) for (k,) in conn.execute(select(t.migration_quarantine.c.path))}
        kept |= rejected_blob_keys(conn)  # withdrawn by an IOCM note, kept by policy
        return kept | {str(k) for (k,) in conn.execute(select(h.path).where(h.status == "held"))}
