"""The one ingest pipeline every way in calls (C-STORE, STOW-RS, import, migration, demo)."""

from solent.ingest.pipeline import Ingestor, IngestPolicy

__all__ = ["IngestPolicy", "Ingestor"]
