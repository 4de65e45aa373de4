"""The key that signs local bearer tokens.

Default: an Ed25519 key generated into ``data_dir/security/token-signing-key.pem`` on first use,
readable by the owner only (0600). Several nodes sharing one archive set ``token_secret``
instead (HS256), because a key in one node's data dir is not seen by the others.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from solent.settings import Settings

KEY_FILE = "token-signing-key.pem"


@dataclass(frozen=True)
class SigningKey:
    algorithm: str  # "EdDSA" or "HS256"
    private: Ed25519PrivateKey | bytes
    public: Ed25519PublicKey | bytes


def key_path(settings: Settings) -> Path:
    return settings.data_dir / "security" / KEY_FILE


def _create(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private(path, pem)


def write_private(path: Path, data: bytes) -> None:
    """Write a new key atomically with mode 0600; a concurrent creator's key wins if first."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".key-")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process created the key first
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def load_signing_key(settings: Settings) -> SigningKey:
    secret = settings.token_secret.get_secret_value()
    if secret:
        raw = secret.encode("utf-8")
        return SigningKey("HS256", raw, raw)
    path = key_path(settings)
    if not path.exists():
        _create(path)
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return SigningKey("EdDSA", private, private.public_key())
