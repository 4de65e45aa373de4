"""No runtime reach-through (issue 11): an adapter holding the ``Services`` bundle cannot get to
the index, the blob store or a database engine/connection by following public attribute names
(``services.query.index``, ``services.retrieve.store.root`` ...). ``lint-imports`` stops the
imports; this stops the attribute walk that needs no import.

The walk follows public names (no leading underscore) of the bundle and of every object found,
a few levels deep, into lists, tuples, dicts and sets too; it fails naming each path found.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from solent.app import Archive
from solent.index.sql import Index
from solent.services.identity import IdentityService
from solent.storage.filesystem import FileBlobStore

DEPTH = 4
FORBIDDEN: tuple[type, ...] = (Index, Engine, Connection, Session)
ATOMS = (str, bytes, int, float, bool, type(None))


def _forbidden(value: object) -> bool:
    if isinstance(value, FORBIDDEN):
        return True
    # Every blob store (filesystem, S3, wrappers) lives in solent.storage.
    return type(value).__module__.startswith("solent.storage")


def _public_values(obj: object) -> list[tuple[str, object]]:
    if isinstance(obj, dict):
        return [(f"[{k!r}]", v) for k, v in list(obj.items())[:50]]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [(f"[{i}]", v) for i, v in enumerate(list(obj)[:50])]
    names: set[str] = set()
    if dataclasses.is_dataclass(obj):
        names |= {f.name for f in dataclasses.fields(obj)}
    names |= set(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        names |= set(getattr(cls, "__slots__", ()))
        # Properties are public attributes too (e.g. a ``store`` property).
        names |= {n for n, v in vars(cls).items() if isinstance(v, property)}
    out = []
    for name in sorted(n for n in names if not n.startswith("_")):
        try:
            out.append((f".{name}", getattr(obj, name)))
        except Exception:  # a property that cannot answer is no way through
            continue
    return out


def reach_through(root: object, root_name: str = "services") -> list[str]:
    """Paths of public names from ``root`` to an index, blob store or engine/connection."""
    found: list[str] = []
    seen: set[int] = set()
    todo: list[tuple[str, object, int]] = [(root_name, root, 0)]
    while todo:
        path, obj, depth = todo.pop()
        if id(obj) in seen or isinstance(obj, (*ATOMS, type)):
            continue
        seen.add(id(obj))
        for name, value in _public_values(obj):
            if _forbidden(value):
                found.append(f"{path}{name} -> {type(value).__name__}")
            elif depth + 1 < DEPTH:
                todo.append((f"{path}{name}", value, depth + 1))
    return sorted(found)


def test_the_walk_finds_a_reach_through(archive: Archive) -> None:
    """The check itself: a public index or store two levels down is found."""

    @dataclasses.dataclass
    class Leaky:
        inner: Any

    class Holder:
        def __init__(self, index: Index, store: object) -> None:
            self.index = index
            self._store = store
            self.items = [store]

    leaks = reach_through(Leaky(Holder(archive.index, archive.store)), "leaky")
    assert leaks == [
        "leaky.inner.index -> Index",
        f"leaky.inner.items[0] -> {type(archive.store).__name__}",
    ]
    assert isinstance(archive.store, FileBlobStore)


def test_services_expose_no_index_store_or_connection(archive: Archive) -> None:
    leaks = reach_through(archive.services)
    assert leaks == [], "public ways from the Services bundle to the data layer:\n" + "\n".join(
        leaks
    )


# -- every door takes the caller --------------------------------------------------------------

#: Public methods adapters can reach (on the bundle or through public attributes) that take no
#: caller, each with why that is safe: it touches no patient data, or it is the plumbing of a
#: door whose patient data is reached only under a caller. Anything else must take the
#: ``principal`` (or a ``Change``, which carries it): the service then decides and audits.
_AUTHN = "authentication: turns credentials into the caller; returns no patient data"
_CONFIG = "configuration (trusts, DICOM nodes, HL7 senders): no patient data; changes take one"
_LIFECYCLE = "process life cycle (start, stop, health): no patient data"
_LIVE = (
    "MDT live-room plumbing: relays the events of members the MDT service admitted "
    "(MdtService.join takes the caller and gives each Member the items it may see)"
)
_HANDLE = (
    "works on a StoredInstance / CurrentIdentity the caller got from an access-checked, "
    "audited locate (RetrieveService.instances / study_instances take the principal)"
)
NO_CALLER: dict[str, str] = {
    "Authenticator.basic": _AUTHN,
    "Authenticator.bearer": _AUTHN,
    "Authenticator.remembered": _AUTHN,
    "UserService.login": _AUTHN,
    "UserService.refresh": _AUTHN + " (refreshes the presented token's own session)",
    "LoginLimits.admit": _AUTHN + " (login throttling per address and name)",
    "LoginLimits.failed": _AUTHN + " (login throttling per address and name)",
    "LoginLimits.first_refusal": _AUTHN + " (login throttling per address and name)",
    "LoginLimits.hashing": _AUTHN + " (a slot for one Argon2 check)",
    "Buckets.take": _AUTHN + " (token buckets of the login limits)",
    "Buckets.wait": _AUTHN + " (token buckets of the login limits)",
    "UserService.get": "one account row (name, trust, roles): no patient data",
    "UserService.principal": _AUTHN + " (the caller an authenticated account's session is)",
    "UserService.session_org": _AUTHN + " (the organisation a session acts for, R33)",
    "PatientQueryService.domains": "the identification domains: NHS and the trust codes",
    "PatientQueryService.check_domains": "names the unknown domains of a query: trust codes",
    "UserService.list": "account rows for the CLI operator (the API passes the actor)",
    "Directory.destinations": _CONFIG,
    "Directory.node": _CONFIG,
    "Directory.nodes": _CONFIG,
    "Directory.sender": _CONFIG,
    "Directory.senders": _CONFIG,
    "Directory.trust": _CONFIG,
    "Directory.trusts": _CONFIG,
    "PeerAddresses.hl7_sender_address": "is this address a registered HL7 sender's: a yes/no",
    "HealthService.begin_shutdown": _LIFECYCLE,
    "HealthService.live": _LIFECYCLE,
    "HealthService.ready": _LIFECYCLE,
    "JobsService.start_background": _LIFECYCLE,
    "JobsService.stop_background": _LIFECYCLE,
    "MdtService.start_background": _LIFECYCLE,
    "MdtService.stop_background": _LIFECYCLE,
    "MdtService.due_prefetches": "the background sweep: each warming runs as its coordinator",
    "RetrieveService.frame_key": "a cache key from an instance already located for a caller",
    "QueryService.use_access": "composition: app.py hands the query service the access rule",
    "LocalBroadcast.close": _LIFECYCLE,
    "LocalBroadcast.publish": "cache-invalidation and room messages between nodes",
    "LocalBroadcast.publish_in": "cache-invalidation and room messages between nodes",
    "LocalBroadcast.subscribe": "cache-invalidation and room messages between nodes",
    "InboxService.journal": (
        "HL7 plumbing: keeps what a registered feed sent (the gate checked it) and returns "
        "only that feed's own earlier entry for a replay"
    ),
    "InboxService.reject_unjournalled": "HL7 plumbing: keeps an unreadable message",
    "InboxService.process": (
        "HL7 plumbing: applies a message under the Change its change_for builds (the feed's "
        "principal), which the identity service checks and audits"
    ),
    "MdtService.keep_live": _LIVE,
    "MdtService.stored_live": _LIVE,
    "MdtService.wait_prefetch": "tests and tools: waits for a prefetch thread; returns nothing",
    "LiveHub.close": _LIVE,
    "LiveHub.discard_if_empty": _LIVE,
    "LiveHub.handle": _LIVE,
    "LiveHub.join": _LIVE,
    "LiveHub.leave": _LIVE,
    "LiveHub.meeting_of": _LIVE,
    "LiveHub.prepare": _LIVE,
    "LiveHub.presenting": _LIVE,
    "LiveHub.publish": _LIVE,
    "LiveHub.restore": _LIVE,
    "LiveHub.stored": _LIVE,
    "LiveHub.tick": _LIVE,
    "LiveHub.topic": _LIVE,
    "RetrieveService.cached_header": _HANDLE,
    "RetrieveService.check_frames": _HANDLE,
    "RetrieveService.document_media_type": _HANDLE,
    "RetrieveService.etag": _HANDLE,
    "RetrieveService.etag_of": "a validator from content hashes: no patient data",
    "RetrieveService.identity_changed": _HANDLE,
    "RetrieveService.known_changed": _HANDLE,
    "AccessCache.clear": "drops remembered grants (a revocation): returns nothing",
    "RetrieveService.forget_decisions": "drops remembered grants (a revocation): returns nothing",
    "ByteCache.get": (
        "the WADO-RS response cache, keyed by an ETag of content hashes (SHA-256) the adapter "
        "gets only from an access-checked, audited locate: a key cannot be guessed"
    ),
    "ByteCache.put": "the WADO-RS response cache: stores what an access-checked read produced",
}


def _solent_methods(obj: object) -> list[tuple[str, Any]]:
    """Public methods defined by our own classes (not pydantic's, not object's)."""
    out = []
    for name in sorted(dir(type(obj))):
        if name.startswith("_"):
            continue
        owner = next((c for c in type(obj).__mro__ if name in vars(c)), None)
        if owner is None or not owner.__module__.startswith("solent."):
            continue
        member = vars(owner)[name]
        if isinstance(member, property):
            continue
        fn = getattr(obj, name, None)
        if callable(fn):
            out.append((f"{owner.__name__}.{name}", fn))
    return out


def _takes_caller(fn: Any) -> bool:
    for p in inspect.signature(fn).parameters.values():
        ann = (
            p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        )
        if p.name == "principal" or ann in ("Principal", "Change"):
            return True
    return False


def callerless_methods(root: object) -> dict[str, str]:
    """Public methods of the services reachable from ``root`` without a caller -> a path."""
    found: dict[str, str] = {}
    seen: set[int] = set()
    todo: list[tuple[str, object, int]] = [("services", root, 0)]
    while todo:
        path, obj, depth = todo.pop()
        if id(obj) in seen or isinstance(obj, (*ATOMS, type)) or _forbidden(obj):
            continue
        seen.add(id(obj))
        if type(obj).__module__.startswith(("solent.services", "solent.security", "solent.ingest")):
            for name, fn in _solent_methods(obj):
                if not _takes_caller(fn):
                    found.setdefault(name, path)
        for name, value in _public_values(obj):
            if depth + 1 < DEPTH:
                todo.append((f"{path}{name}", value, depth + 1))
    return found


def test_every_public_service_method_takes_the_caller(archive: Archive) -> None:
    """Issue 11: an adapter cannot read or change patient data without naming the caller,
    because no method it can reach does so; the few that take none are listed with why."""
    found = callerless_methods(archive.services)
    unexplained = sorted(
        f"{name} (via {path})" for name, path in found.items() if name not in NO_CALLER
    )
    assert unexplained == [], "methods adapters reach without a caller:\n" + "\n".join(unexplained)
    stale = sorted(set(NO_CALLER) - set(found))
    assert stale == [], f"NO_CALLER lists methods that take a caller now or are gone: {stale}"


def test_the_method_walk_finds_a_callerless_door(archive: Archive) -> None:
    """The check itself: the whole identity service one level down is found, record by
    record, while its door (every method takes the caller) is not."""

    @dataclasses.dataclass
    class Leaky:
        inner: Any

    found = callerless_methods(Leaky(IdentityService(archive.index)))
    assert {"IdentityReads.record", "IdentityReads.person", "IdentityLinks.resolve"} <= set(found)
    assert found["IdentityReads.record"] == "services.inner"
    assert callerless_methods(Leaky(archive.services.identity)) == {}
