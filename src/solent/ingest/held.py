"""The kept copy of an instance held for identity reconciliation (issue 11; the index side is
``solent.index.held``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from solent.index.held import HELD
from solent.storage import BlobStore, blob_key_for

__all__ = ["HELD", "held_key", "keep_copy"]


def held_key(sha256_hex: str) -> str:
    """Where a held instance's copy lives: shaped like a content key but never equal to one,
    so ingest's clean-up of a refused blob with the same bytes cannot delete it."""
    key = blob_key_for(sha256_hex)
    return f"{key[:6]}h{key[6:]}"


def keep_copy(store: BlobStore, key: str, held: str, tmp_dir: Path | None = None) -> None:
    """Copy blob ``key`` to ``held`` (durable, as every put). The store has no copy of its
    own (S3 and files differ), so the bytes go through a temporary file, removed whatever
    happens."""
    fd, name = tempfile.mkstemp(prefix="solent-held-", dir=tmp_dir)
    try:
        with store.open(key) as src, os.fdopen(fd, "wb") as tmp:
            shutil.copyfileobj(src, tmp, 1 << 20)
        store.put_file(held, Path(name), move=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
