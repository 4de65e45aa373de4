"""Folder import and legacy-PACS migration; both only call ingest."""
