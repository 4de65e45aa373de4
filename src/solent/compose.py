"""The composition steps every entry point shares, without `app.py`'s imports.

`app.py` composes the whole archive and imports every service and protocol to do it (~0.9 s
of a process start). A CLI command that only manages users and tokens needs the index and the
keyed audit trail: built here, such a command starts in a third of the time (the test suite
alone creates a few hundred accounts and tokens through the CLI).
"""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from solent import ttl_cache
from solent.errors import ConfigurationError, IndexUnavailable
from solent.index import audit as audit_chain
from solent.index.sql import Index
from solent.security.audit_key import load_audit_key
from solent.security.users import UserService
from solent.services.audit import AuditTrail
from solent.services.national_rbac import load_policy
from solent.settings import Settings


def open_index(settings: Settings, *, migrate: bool = True) -> Index:
    """The index of ``settings``, its schema brought up to date unless ``migrate`` is False."""
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"SOLENT_DATA_DIR {settings.data_dir} cannot be created or used ({exc.strerror}); "
            "set SOLENT_DATA_DIR (or data_dir in the --config file) to a folder this user can "
            "write"
        ) from exc
    url = settings.effective_database_url
    try:
        index = Index(url)
        if migrate:
            index.migrate()
    except OperationalError as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        first = str(exc.orig or exc).strip().splitlines()[0]
        raise IndexUnavailable(
            f"cannot open the index at {shown}: {first}; check SOLENT_DATABASE_URL and that "
            "the database server is running and reachable"
        ) from exc
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
    national = load_policy(settings.rbac_policy) if settings.rbac_policy else None
    return UserService(index, settings, keyed_audit(index, settings), national)
