"""Blob storage: one small port, a filesystem and an S3-compatible implementation."""

from solent.storage.base import PLACED, BlobStore, Placement, blob_key_for, open_blob_store

__all__ = ["PLACED", "BlobStore", "Placement", "blob_key_for", "open_blob_store"]
