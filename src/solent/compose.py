"""The composition steps every entry point shares, without `app.py`'s imports.

`app.py` composes the whole archive and imports every service and protocol to do it (~0.9 s
of a process start). A CLI command that only manages users and tokens needs the index and the
keyed audit trail: built here, such a command starts in a third of the time (the test suite
alone creates a few hundred accounts and tokens through the CLI).
"""

from __future__ import annotations

from solent import ttl_cache
from solent.index import audit as audit_chain
from solent.index.sql import Index
from solent.security.audit_key import load_audit_key
from solent.security.users import UserService
from solent.services.audit import AuditTrail
from solent.settings import Settings


def open_index(settings: Settings, *, migrate: bool = True) -> Index:
    """The index of ``settings``, its schema brought up to date unless ``migrate`` is False."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    index = Index(settings.effective_database_url)
    if migrate:
        index.migrate()
    # Embedded archive: hear the access changes other processes make (PostgreSQL notifies).
    ttl_cache.watch(index.access_stamp)
    return index


def keyed_audit(index: Index, settings: Settings) -> AuditTrail:
    """The audit trail, sealed with the key kept outside the index (issue 11)."""
    audit_chain.use_key(index, load_audit_key(settings))
    audit_chain.check_key(index)
    return AuditTrail(index)


def user_service(settings: Settings) -> UserService:
    """Accounts and tokens of the archive of ``settings``, audited as in a running node."""
    index = open_index(settings)
    return UserService(index, settings, keyed_audit(index, settings))
