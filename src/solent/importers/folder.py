"""`solent import`: files and folders (DICOMDIR welcome) through the one ingest pipeline."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from solent.domain.outcomes import Outcome, RejectReason, StoreResult
from solent.domain.principal import Channel, Principal, Provenance
from solent.ingest import Ingestor


@dataclass
class ImportSummary:
    stored: list[str] = field(default_factory=list)
    duplicate: list[str] = field(default_factory=list)
    #: Outside studies (R28, ``--outside``): kept, seen by nobody until reconciled.
    held: list[str] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    bytes: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "stored": self.stored,
            "duplicate": self.duplicate,
            "held": self.held,
            "rejected": self.rejected,
            "skipped": self.skipped,
        }


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Every regular file under ``paths``; a DICOMDIR named directly means its whole folder."""
    for path in paths:
        if path.is_file() and path.name.upper() == "DICOMDIR":
            path = path.parent
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield Path(root) / name
        elif path.is_file():
            yield path


def run_import(
    ingestor: Ingestor,
    paths: list[Path],
    principal: Principal,
    *,
    workers: int = 2,
    on_result: Callable[[Path, StoreResult], None] | None = None,
    stream: TextIO | None = None,
    batch_size: int = 16,
) -> ImportSummary:
    """Ingest every file; ``stream`` gets one JSON line per file as soon as it is durable."""
    summary = ImportSummary()

    def one_batch(batch: list[Path]) -> list[StoreResult]:
        items = [(p, Provenance(Channel.IMPORT, source_path=str(p.resolve()))) for p in batch]
        return ingestor.ingest_files(items, principal)

    def record(path: Path, result: StoreResult) -> None:
        p = str(path)
        if result.outcome in (Outcome.STORED, Outcome.REPLACED):
            summary.stored.append(p)
            summary.bytes += path.stat().st_size
        elif result.outcome is Outcome.DUPLICATE:
            summary.duplicate.append(p)
        elif result.outcome is Outcome.HELD:
            summary.held.append(p)
            summary.bytes += path.stat().st_size
        elif result.reason is RejectReason.NOT_AN_INSTANCE:
            summary.skipped.append({"path": p, "reason": result.message})
        else:
            summary.rejected.append({"path": p, "reason": f"{result.reason}: {result.message}"})
        if stream is not None:
            line = {
                "path": p,
                "outcome": result.outcome.value,
                "sop_instance_uid": result.sop_instance_uid,
            }
            if result.reason:
                line["reason"] = f"{result.reason}: {result.message}"
            stream.write(json.dumps(line) + "\n")
            stream.flush()
        if on_result is not None:
            on_result(path, result)

    def record_batch(batch: list[Path], results: list[StoreResult]) -> None:
        for path, result in zip(batch, results, strict=True):
            record(path, result)

    # Files go to ingest in small batches: one index commit per batch (group commit) instead of
    # one per file. Bounded in-flight work: millions of files must not become millions of futures.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="import") as pool:
        pending: dict[Future[list[StoreResult]], list[Path]] = {}
        batch: list[Path] = []
        for path in iter_files(paths):
            batch.append(path)
            if len(batch) < batch_size:
                continue
            pending[pool.submit(one_batch, batch)] = batch
            batch = []
            if len(pending) >= workers * 2:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    record_batch(pending.pop(fut), fut.result())
        if batch:
            pending[pool.submit(one_batch, batch)] = batch
        for fut in list(pending):
            record_batch(pending.pop(fut), fut.result())
    return summary


def count_files(paths: list[Path]) -> int:
    return sum(1 for _ in iter_files(paths))


def print_summary(summary: ImportSummary, out: TextIO | None = None) -> None:
    out = out or sys.stderr  # looked up now: a default bound at import time outlives stderr
    held = f"held for reconciliation {len(summary.held)}, " if summary.held else ""
    out.write(
        f"stored {len(summary.stored)}, duplicate {len(summary.duplicate)}, {held}"
        f"rejected {len(summary.rejected)}, skipped {len(summary.skipped)} "
        f"({summary.bytes / 1e6:.1f} MB stored)\n"
    )
    if summary.held:
        out.write(
            "  outside studies are seen by nobody until an identity steward reconciles each "
            "to a patient: `solent identity imports`\n"
        )
    for item in summary.rejected:
        out.write(f"  rejected {item['path']}: {item['reason']}\n")
    for item in summary.skipped:
        out.write(f"  skipped {item['path']}: {item['reason']}\n")
