"""`Authenticator.remembered`: what the HTTP middleware answers without a thread hand-off. It
must grant exactly what `bearer` granted, and nothing `bearer` would now refuse."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from solent.app import Archive
from solent.domain.principal import SYSTEM
from solent.security import authn, tokens
from solent.security.keys import load_signing_key
from tests.unit.security_fixtures import add_user, users


def test_a_local_token_is_remembered_after_its_signature_was_checked(archive: Archive) -> None:
    auth = archive.services.authenticator
    token = add_user(archive, "drza", "ZZA", "clinician")["Authorization"].split()[1]
    assert auth.remembered(token, "10.0.0.1") is None  # nothing checked yet
    checked = auth.bearer(token, "10.0.0.1")
    assert auth.remembered(token, "10.0.0.1") == checked
    assert auth.remembered(token + "x", "10.0.0.1") is None  # another (forged) token
    users(archive).end_sessions(SYSTEM, "drza")  # "log out everywhere": the epoch moves
    assert auth.remembered(token, "10.0.0.1") is None


def test_an_expired_remembered_token_is_left_to_bearer(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = archive.services.authenticator
    add_user(archive, "drza", "ZZA", "clinician")
    short, _ = tokens.issue_local(load_signing_key(archive.settings), "drza", timedelta(seconds=1))
    auth.bearer(short, None)
    assert auth.remembered(short, None) is not None
    later = time.time() + 1 + authn.JWT_LEEWAY_S + 0.5
    monkeypatch.setattr("solent.security.authn.time.time", lambda: later)
    assert auth.remembered(short, None) is None


def test_api_tokens_and_disabled_users(archive: Archive) -> None:
    auth = archive.services.authenticator
    svc = users(archive)
    svc.add(SYSTEM, "ris-zzb", "ZZB", ("integration",), None)
    issued = svc.issue_api_token(SYSTEM, "ris-zzb", "RIS of ZZB", days=30)
    assert auth.remembered(issued.token, None) is None
    principal = auth.bearer(issued.token, None)
    assert auth.remembered(issued.token, None) == principal
    assert auth.remembered(tokens.new_api_token(), None) is None
    svc.disable(SYSTEM, "ris-zzb")
    assert auth.remembered(issued.token, None) is None
    with pytest.raises(authn.AuthenticationFailed):
        auth.bearer(issued.token, None)
