"""Password hashing: no Argon2 work at import (every `solent` process imports the module), and
an unknown name is still verified against a real hash."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest
from argon2 import PasswordHasher

from solent.security import passwords


@pytest.fixture
def reloaded() -> Iterator[Any]:
    """The module imported afresh; imported afresh again afterwards for the other tests."""
    yield importlib.reload(passwords)
    importlib.reload(passwords)


def test_import_hashes_nothing(monkeypatch: pytest.MonkeyPatch, reloaded: Any) -> None:
    made: list[str] = []
    real = PasswordHasher.hash

    def counting(self: PasswordHasher, password: str | bytes, **kw: Any) -> str:
        made.append(str(password))
        return real(self, password, **kw)

    monkeypatch.setattr(PasswordHasher, "hash", counting)
    module = importlib.reload(passwords)
    assert made == []  # importing cost no Argon2 hash (~0.2 s of CPU each)
    stored = module.hash_password("correct horse battery staple")
    assert len(made) == 1
    # The first verification makes the unknown-name hash, whether or not the name is known.
    assert module.verify_password(stored, "correct horse battery staple")
    assert len(made) == 2
    assert not module.verify_password(None, "correct horse battery staple")
    assert not module.verify_password(stored, "wrong horse battery staple")
    assert len(made) == 2  # made once per process
