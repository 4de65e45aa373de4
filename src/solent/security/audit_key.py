"""The key that seals the audit chain (HMAC-SHA-256), kept outside the index.

Whoever can write to the database but does not hold this key cannot rewrite the trail and
recompute a chain that ``solent audit verify`` accepts. Default: 32 random bytes generated into
``data_dir/security/audit-key`` (mode 0600) on first use. Several nodes sharing one archive, or
a SQLite archive whose data directory the database writer can also read, set ``audit_key``
(SOLENT_AUDIT_KEY) instead, from a secret store. Losing the key means the existing trail can no
longer be verified: back it up with the token signing key.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from solent.security.keys import write_private
from solent.settings import Settings

KEY_FILE = "audit-key"


def audit_key_path(settings: Settings) -> Path:
    return settings.data_dir / "security" / KEY_FILE


def load_audit_key(settings: Settings) -> bytes:
    secret = settings.audit_key.get_secret_value()
    if secret:
        return secret.encode("utf-8")
    path = audit_key_path(settings)
    if not path.exists():
        write_private(path, secrets.token_hex(32).encode("ascii") + b"\n")
    return path.read_bytes().strip()
