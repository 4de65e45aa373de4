"""docs/operations.md's Grafana dashboard plots only metrics a node exports (issue 16)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import solent.jobs.queue
import solent.jobs.tasks
import solent.metrics  # noqa: F401  (registers the ingest metrics)
from solent.jobs.queue import COLLECTOR, InProcessQueue
from solent.jobs.tasks import CONSUMERS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def exported_names() -> set[str]:
    names = set()
    for metric in REGISTRY.collect():
        names.add(metric.name)
        names.update(sample.name for sample in metric.samples)
    return names


def test_every_solent_metric_the_dashboard_plots_is_exported(tmp_path: Path) -> None:
    from solent.app import build_archive
    from solent.settings import load_settings

    archive = build_archive(load_settings(environ={}, data_dir=tmp_path / "var"))
    COLLECTOR.queue = InProcessQueue(archive.index, archive.store, consumers=CONSUMERS)
    try:
        dashboard = json.loads((DOCS / "grafana" / "solent-dashboard.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        plotted = {m for e in exprs for m in re.findall(r"\b(solent_[a-z_]+|process_[a-z_]+)", e)}
        assert plotted, "the dashboard plots nothing"
        exported = exported_names()
        # Counters and histograms export suffixed samples (_total, _bucket): match either.
        missing = {
            m for m in plotted if m not in exported and m.removesuffix("_bucket") not in exported
        }
        # Labelled metrics appear once used; their families are registered all the same.
        families = {m.name for m in REGISTRY.collect()}
        missing = {
            m for m in missing if m.removesuffix("_total").removesuffix("_bucket") not in families
        }
        assert not missing, f"plotted but never exported: {sorted(missing)}"
    finally:
        COLLECTOR.queue = None
        archive.close()
