"""Prometheus metrics. Labels carry outcomes and channels, never patient data."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

INGEST_INSTANCES = Counter(
    "solent_ingest_instances_total",
    "Instances through ingest, by outcome",
    ["channel", "outcome", "reason"],
)
INGEST_BYTES = Counter("solent_ingest_bytes_total", "Bytes stored by ingest", ["channel"])
INGEST_SECONDS = Histogram(
    "solent_ingest_seconds",
    "Time from a received file to its durable, indexed state",
    ["channel"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
