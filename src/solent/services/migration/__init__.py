"""Legacy PACS migration state: sources, inventory, reconciliation, transfer outcomes (issue 13).

The importers (``solent.importers.migration``) talk to the legacy systems; this service owns
what must survive a crash: every instance a source holds is a row whose state moves
pending -> stored | duplicate | quarantined | failed, or waits while its patient's identity is
unresolved, or is held as ``conflict`` while the source lists its SOP Instance UID twice.
Identity decisions are the identity service's (the same rules as HL7); storing is
the one ingest pipeline's. A killed run resumes from these rows: ingest is idempotent per SOP
Instance UID, so an instance stored just before the kill comes back as a duplicate, not twice.

One job per module: ``model`` (vocabulary), ``inventory`` (sources, delta sync), ``reconcile``
(identity before data), ``transfer`` (what to fetch, storing it), ``copies`` (two copies of one
instance compared), ``quarantine`` (what a differing copy is; the best one served, every other
kept in the blob store), ``verify`` (the R55 report). ``MigrationService`` is the one
door callers see; it delegates, and audits an operator's exclusions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from solent.domain.principal import Principal
from solent.index.sql import Index
from solent.ingest import Ingestor
from solent.services.audit import AuditAction, AuditTrail, PatientRef
from solent.services.identity import IdentityService
from solent.services.migration.copies import content_digest
from solent.services.migration.inventory import Inventory
from solent.services.migration.model import (
    Entry,
    InventoryDelta,
    Item,
    Plan,
    Source,
    within_hours,
)
from solent.services.migration.quarantine import Quarantine
from solent.services.migration.reconcile import Reconciler
from solent.services.migration.transfer import Transfer
from solent.services.migration.verify import Verification
from solent.storage import BlobStore

__all__ = [
    "Entry",
    "InventoryDelta",
    "Item",
    "MigrationService",
    "Plan",
    "Source",
    "content_digest",
    "within_hours",
]


class MigrationService:
    def __init__(
        self,
        index: Index,
        store: BlobStore,
        ingestor: Ingestor,
        identity: IdentityService,
        audit: AuditTrail,
    ) -> None:
        self._identity = identity
        self._audit = audit
        self._inventory = Inventory(index)
        self._reconciler = Reconciler(index, identity)
        # A better copy than the archive's (R54) replaces it; every other way in refuses that.
        replacing = Ingestor(index, store, dataclasses.replace(ingestor.policy, conflict="replace"))
        quarantine = Quarantine(index, store, identity)
        self._transfer = Transfer(index, ingestor, replacing, identity, quarantine)
        self._verification = Verification(index, store)

    # -- sources and inventory -----------------------------------------------------------------

    def add_source(self, principal: Principal, src: Source) -> Source:
        return self._inventory.add_source(principal, src)

    def sources(self, principal: Principal) -> list[Source]:
        return self._inventory.sources(principal)

    def source(self, principal: Principal, name: str) -> Source:
        return self._inventory.source(principal, name)

    def record_inventory(
        self, principal: Principal, source: str, entries: Iterable[Entry]
    ) -> InventoryDelta:
        return self._inventory.record_inventory(principal, source, entries)

    def inventory(self, principal: Principal, source: str) -> list[dict[str, Any]]:
        return self._inventory.inventory(principal, source)

    def progress(self, principal: Principal, source: str) -> dict[str, int]:
        return self._inventory.progress(principal, source)

    def forget_source(self, principal: Principal, source: str) -> None:
        self._inventory.forget_source(principal, source)

    # -- reconciliation ------------------------------------------------------------------------

    def reconcile(self, principal: Principal, source: str, *, dry_run: bool = False) -> Plan:
        src = self._inventory.source(principal, source)
        return self._reconciler.reconcile(principal, src, dry_run=dry_run)

    # -- transfer ------------------------------------------------------------------------------

    def pending(
        self, principal: Principal, source: str, *, newest_first: bool = True, limit: int = 0
    ) -> list[Item]:
        return self._transfer.pending(principal, source, newest_first=newest_first, limit=limit)

    def accept(self, principal: Principal, src: Source, item: Item, path: Path) -> str:
        return self._transfer.accept(principal, src, item, path)

    def accept_batch(
        self, principal: Principal, src: Source, fetched: list[tuple[Item, Path]]
    ) -> list[str]:
        return self._transfer.accept_batch(principal, src, fetched)

    def fail(self, principal: Principal, source: str, sop_uid: str, reason: str) -> None:
        self._transfer.fail(principal, source, sop_uid, reason)

    def exclude(self, principal: Principal, source: str, sop_uids: list[str], reason: str) -> int:
        """Leave instances the source can never deliver out of the migration (Transfer.exclude);
        one audit record per study, naming the instances and the reason."""
        src = self._inventory.source(principal, source)
        rows = self._transfer.exclude(principal, source, sop_uids, reason)
        self._audit_change(principal, src, rows, {"excluded": True, "reason": reason})
        return len(rows)

    def include(self, principal: Principal, source: str, sop_uids: list[str]) -> int:
        """Undo ``exclude``: the next run fetches them again; audited like ``exclude``."""
        src = self._inventory.source(principal, source)
        rows = self._transfer.include(principal, source, sop_uids)
        self._audit_change(principal, src, rows, {"excluded": False})
        return len(rows)

    def _audit_change(
        self,
        principal: Principal,
        src: Source,
        rows: list[dict[str, Any]],
        detail: dict[str, Any],
    ) -> None:
        by_study: dict[tuple[str, str], list[str]] = {}
        for r in rows:
            by_study.setdefault((r["study_uid"], r["patient_id"]), []).append(r["sop_uid"])
        for (study_uid, patient_id), sops in by_study.items():
            self._audit.record(
                principal,
                AuditAction.IMPORT,
                patient=PatientRef(src.trust, patient_id) if patient_id else None,
                study_uid=study_uid,
                detail={"migration": src.name, "instances": sops, **detail},
            )

    # -- verification --------------------------------------------------------------------------

    def verification(self, principal: Principal, source: str) -> dict[str, Any]:
        return self._verification.verification(principal, source)
