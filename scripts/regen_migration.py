"""Regenerate the single initial Alembic revision from src/solent/index/schema.py.

We have no deployed databases yet, so the schema lives in one revision; once a release ships,
new revisions are added instead (and this script is retired).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from alembic import command

from solent.index.migrate import MIGRATIONS, alembic_config
from solent.index.sql import Index

target = MIGRATIONS / "versions" / "0001_initial_schema.py"
target.unlink(missing_ok=True)
with tempfile.TemporaryDirectory() as tmp:
    index = Index(f"sqlite:///{tmp}/gen.db")
    command.revision(alembic_config(index), message="initial schema", autogenerate=True, rev_id="0001")
    index.close()
text = target.read_text()
lines = [ln if not ln.startswith("Create Date:") else "Create Date: 2026-11-27" for ln in text.splitlines()]
target.write_text("\n".join(lines) + "\n")
print(f"wrote {target}")
