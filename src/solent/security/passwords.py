"""Password hashing with Argon2id (argon2-cffi's RFC 9106 low-memory profile)."""

from __future__ import annotations

from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from solent.errors import InvalidInput

_hasher = PasswordHasher()
MIN_LENGTH = 12


@cache
def _dummy() -> str:
    """The hash a login of an unknown name is verified against, so a failed login takes as long
    whether or not the name is known. Made on the first verification, not at import: an Argon2
    hash costs ~0.2 s of CPU, and every `solent` command and server process imports this module
    (most never verify a password). Every verification asks for it first, known name or not, so
    the one-off cost does not tell the two apart either."""
    return _hasher.hash("solent-no-such-user-placeholder")


def check_strength(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise InvalidInput(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > 1024:
        raise InvalidInput("a password has at most 1024 characters")


def hash_password(password: str) -> str:
    check_strength(password)
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    dummy = _dummy()
    try:
        return _hasher.verify(stored_hash or dummy, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
