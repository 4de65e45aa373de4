"""SQL of the audit trail: append-only rows chained by HMAC-SHA-256, and the checks that prove it.

Each record's hash covers its sequence number, the previous record's hash and every field, so an
edited, deleted, inserted or reordered record breaks the chain. ``audit_head`` remembers the last
sequence number and hash, so truncating the tail is caught as well; its row lock serialises
appends on PostgreSQL (SQLite serialises writers anyway).

A record appended on its own, not with a data change (a query, a view, a break-glass), is
chained inside PostgreSQL instead, so the head's row lock, which every auditing request of
every node queues for, is held for microseconds rather than across round trips and the node's
GIL: its hash is SHA-256(previous hash || HMAC of its fields), computed by the database from
the HMAC the node made before taking the lock (``append_alone``). ``verify`` accepts either
form for any record; both need the key to forge.

The hash is an HMAC under a key kept outside the index (``security/audit_key.py``), so someone
who can write to the database but does not hold the key cannot recompute a rewritten chain.
The key is registered per engine by the composition root (``use_key``). An index opened without
it (bare ``Index`` objects of unit tests and tools) chains with plain SHA-256 as before, but
may not append to a trail once a key has sealed it (the head records the key's fingerprint), so
no node can quietly write unprotected rows into a keyed trail. Rows written before the key
existed carry plain hashes: ``verify`` names them and ``seal`` re-chains them under the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import weakref
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from solent.errors import ConfigurationError
from solent.index import schema as t
from solent.index.prepared import Prepared
from solent.index.sql import Index

GENESIS = "0" * 64

# The fields a record's hash covers, in the order they are hashed.
FIELDS = (
    "at",
    "action",
    "outcome",
    "actor_kind",
    "actor_name",
    "actor_trust",
    "actor_roles",
    "actor_address",
    "patient_issuer",
    "patient_id",
    "nhs_number",
    "study_uid",
    "purpose",
    "detail",
)


class AuditKeyError(ConfigurationError):
    """No audit key, or not the key that sealed this trail: appending would fork the chain."""


class ChainKey:
    """The HMAC key of the chain, with a precomputed keyed state (copied per record: fast)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise AuditKeyError("the audit key needs at least 16 bytes")
        self._mac = hmac.new(secret, digestmod=hashlib.sha256)
        self.key_id = hmac.new(secret, b"solent-audit-key-id", hashlib.sha256).hexdigest()[:32]

    def digest(self, payload: bytes) -> str:
        mac = self._mac.copy()
        mac.update(payload)
        return mac.hexdigest()


_keys: weakref.WeakKeyDictionary[Engine, ChainKey] = weakref.WeakKeyDictionary()


def use_key(index: Index, secret: bytes) -> None:
    """Seal every record appended through ``index`` with this key (called by app.py)."""
    _keys[index.engine] = ChainKey(secret)


def check_key(index: Index) -> None:
    """Refuse to start with a key other than the one that sealed the trail (a clear error at
    start-up instead of every audited request failing)."""
    key = _keys.get(index.engine)
    try:
        with index.read() as conn:
            sealed_by = conn.execute(
                select(t.audit_head.c.key_id).where(t.audit_head.c.id == 1)
            ).scalar()
    except SQLAlchemyError:  # opened without migrating, before revision 0002: nothing sealed
        return
    if sealed_by is not None and (key is None or key.key_id != sealed_by):
        raise AuditKeyError(
            "this node's audit key is not the key that sealed the audit trail; give every "
            "node the same key (SOLENT_AUDIT_KEY or data_dir/security/audit-key)"
        )


def key_of(conn: Connection) -> ChainKey | None:
    return _keys.get(conn.engine)


_NO_KEY = (
    "the audit trail is sealed with a key but this process has none: open the archive with "
    "solent.app.build_archive, which loads it (data_dir/security/audit-key or SOLENT_AUDIT_KEY)"
)


#: The payload's keys in sorted order: building the dict in this order and dumping it without
#: ``sort_keys`` gives the same bytes as before (values are scalars), a fifth faster.
_ORDER = tuple(sorted(("seq", "prev", *FIELDS)))


def _payload(seq: int, prev_hash: str, fields: dict[str, Any]) -> bytes:
    own = {"seq": seq, "prev": prev_hash}
    return json.dumps(
        {k: own[k] if k in own else fields.get(k) for k in _ORDER},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")


def record_hash(seq: int, prev_hash: str, fields: dict[str, Any]) -> str:
    """The unkeyed SHA-256 of a record: how rows were chained before revision 0002."""
    return hashlib.sha256(_payload(seq, prev_hash, fields)).hexdigest()


def keyed_hash(key: ChainKey | None, seq: int, prev_hash: str, fields: dict[str, Any]) -> str:
    """The HMAC of a record under ``key`` (plain SHA-256 for an index opened without one)."""
    if key is None:
        return record_hash(seq, prev_hash, fields)
    return key.digest(_payload(seq, prev_hash, fields))


# Built once: every store appends a record, and building + cache-keying these three
# statements per call cost more than executing them (ingest profile, issue 14).
_h = t.audit_head.c
# On SQLite they run on the DBAPI cursor (Prepared: the per-call overhead of Connection.execute).
_HEAD = Prepared(select(_h.seq, _h.hash, _h.key_id).where(_h.id == 1).with_for_update())
_INSERT_RECORD = Prepared(insert(t.audit_log))
_MOVE_HEAD = Prepared(
    update(t.audit_head)
    .where(_h.id == 1)
    .values(seq=bindparam("seq_"), hash=bindparam("hash_"), key_id=bindparam("key_id_"))
)


def append(conn: Connection, fields: dict[str, Any]) -> int:
    """Append one record inside the caller's write transaction; returns its sequence number."""
    key = key_of(conn)
    key_id = key.key_id if key else None
    head = _HEAD.first(conn, {})
    if head is None:
        # First record ever; a concurrent first insert fails on the primary key and is retried.
        conn.execute(insert(t.audit_head).values(id=1, seq=0, hash=GENESIS, key_id=key_id))
        last_seq, last_hash = 0, GENESIS
    else:
        if head.key_id is not None and key is None:
            raise AuditKeyError(_NO_KEY)
        if head.key_id is not None and head.key_id != key_id:
            raise AuditKeyError(
                "this node's audit key is not the key that sealed the audit trail; give every "
                "node the same key (SOLENT_AUDIT_KEY or data_dir/security/audit-key)"
            )
        last_seq, last_hash = int(head.seq), str(head.hash)
    seq = last_seq + 1
    values = {k: fields.get(k) for k in FIELDS}
    digest = keyed_hash(key, seq, last_hash, values)
    if conn.dialect.name == "postgresql":
        # One statement (a data-modifying WITH): the head's row lock, which every auditing
        # request of every node queues for, is held one round trip less (issue 16).
        record = insert(t.audit_log).values(seq=seq, prev_hash=last_hash, hash=digest, **values)
        advance = update(t.audit_head).where(_h.id == 1).values(seq=seq, hash=digest, key_id=key_id)
        conn.execute(advance.add_cte(record.cte("appended")))
    else:  # the statements built once (issue 14: per-instance ingest cost)
        _INSERT_RECORD.run(conn, {"seq": seq, "prev_hash": last_hash, "hash": digest, **values})
        _MOVE_HEAD.run(conn, {"seq_": seq, "hash_": digest, "key_id_": key_id})
    return seq


_FIELD_ORDER = tuple(sorted(FIELDS))


def record_mac(key: ChainKey | None, fields: dict[str, Any]) -> str:
    """The HMAC (plain SHA-256 without a key) of a record's fields alone, no chain position."""
    payload = json.dumps(
        {k: fields.get(k) for k in _FIELD_ORDER}, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    return key.digest(payload) if key is not None else hashlib.sha256(payload).hexdigest()


def linked_hash(prev_hash: str, mac: str) -> str:
    """The hash of a record chained by the database: SHA-256(previous hash || its HMAC)."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + bytes.fromhex(mac)).hexdigest()


def _one_shot(relaxed: bool) -> str:
    # One simple-query message: the lock is taken, the record chained (PostgreSQL's sha256)
    # and the transaction committed without a round trip back to the node in between. The
    # head is only locked (and the record only written) when its key is this node's.
    columns = ", ".join(FIELDS)
    values = ", ".join(f"%({k})s" for k in FIELDS)
    sync = "SET LOCAL synchronous_commit TO OFF; " if relaxed else ""
    return (  # the names are FIELDS; every value is a parameter (quoted by psycopg)
        f"BEGIN; {sync}"  # noqa: S608
        "WITH head AS (SELECT seq, hash FROM audit_head WHERE id = 1 "
        "AND (key_id IS NULL OR key_id = %(key_id)s) FOR UPDATE), "
        f"rec AS (INSERT INTO audit_log (seq, prev_hash, hash, {columns}) "
        "SELECT seq + 1, hash, "
        "encode(sha256(decode(hash, 'hex') || decode(%(mac)s, 'hex')), 'hex'), "
        f"{values} FROM head RETURNING seq, hash) "
        "UPDATE audit_head SET seq = rec.seq, hash = rec.hash, key_id = %(key_id)s "
        "FROM rec WHERE audit_head.id = 1 RETURNING rec.seq; "
        "COMMIT"
    )


_ONE_SHOT = {relaxed: _one_shot(relaxed) for relaxed in (False, True)}


def append_alone(index: Index, fields: dict[str, Any], *, relaxed: bool) -> int:
    """Append one record in a transaction of its own; returns its sequence number.

    On PostgreSQL one round trip (see the module's docstring); the first record ever, or a
    head sealed by another key, goes the ordinary way (which creates the head, or refuses).
    ``relaxed``: committed without waiting for the disk (records of reads, ``Index.write``).
    """
    if index.dialect != "postgresql":
        return index.write(lambda c: append(c, fields), relaxed=relaxed)
    import psycopg  # PostgreSQL's driver: only imported where it is the index

    key = _keys.get(index.engine)
    values = {k: fields.get(k) for k in FIELDS}
    params = {**values, "mac": record_mac(key, values), "key_id": key.key_id if key else None}
    for attempt in (1, 2):
        with index.engine.connect() as conn:
            raw: Any = conn.connection.driver_connection
            raw.autocommit = True  # the message carries its own BEGIN and COMMIT
            try:
                cur = psycopg.ClientCursor(raw)
                cur.execute(_ONE_SHOT[relaxed], params)
                seq = None
                while True:
                    if cur.description is not None:
                        row = cur.fetchone()
                        seq = int(row[0]) if row else None
                    if not cur.nextset():
                        break
            except psycopg.OperationalError:
                conn.invalidate()  # gone: the pool makes a new one; the message had no effect
                if attempt == 2:
                    raise
                continue
            except psycopg.Error:
                if raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    raw.execute("ROLLBACK")
                raise
            finally:
                if not conn.invalidated:
                    raw.autocommit = False
        if seq is None:
            return index.write(lambda c: append(c, fields), relaxed=relaxed)
        return seq
    raise AssertionError("unreachable")


def patient_of_study(conn: Connection, study_uid: str) -> tuple[str, str, str | None] | None:
    """(issuer, local id, NHS number) of the patient a study is filed under."""
    p, s = t.patient.c, t.study.c
    r = conn.execute(
        select(p.issuer, p.local_id, p.nhs_number)
        .select_from(t.study.join(t.patient, s.patient_pk == p.pk))
        .where(s.study_uid == study_uid)
    ).first()
    return (r.issuer, r.local_id, r.nhs_number) if r else None


@dataclass
class VerifyReport:
    records: int = 0
    unkeyed: int = 0  # leading records still hashed without the key (written before 0002)
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


def _walk(conn: Connection, batch: int, after: int = 0) -> Iterator[list[dict[str, Any]]]:
    last = after
    while True:
        result = conn.execute(
            select(t.audit_log)
            .where(t.audit_log.c.seq > last)
            .order_by(t.audit_log.c.seq)
            .limit(batch)
        )
        keys = tuple(result.keys())
        rows = [dict(zip(keys, r, strict=True)) for r in result]
        if not rows:
            return
        yield rows
        last = int(rows[-1]["seq"])


def _check(
    key: ChainKey | None,
    rows: Iterator[list[dict[str, Any]]],
    report: VerifyReport,
    head_seq: int = 0,
    start: tuple[int, str] = (0, GENESIS),
) -> tuple[int, str]:
    """Check the chain from ``start`` (the purge checkpoint: its last purged record's seq and
    hash); returns (seq, hash) of record ``head_seq`` (or of the last record if the chain is
    shorter). Unkeyed rows are accepted only as a prefix, and only counted."""
    expected, prev = start[0] + 1, start[1]
    at_head: tuple[int, str] | None = None
    keyed_seen = False
    for chunk in rows:
        for r in chunk:
            seq = int(r["seq"])
            report.records += 1
            if seq != expected:
                report.problems.append(
                    f"records {expected}..{seq - 1} are missing (deleted) before record {seq}"
                )
            if r["prev_hash"] != prev:
                report.problems.append(
                    f"record {seq} does not follow the record before it "
                    "(a record was deleted, inserted or reordered)"
                )
            if keyed_hash(key, seq, r["prev_hash"], r) == r["hash"] or (
                linked_hash(r["prev_hash"], record_mac(key, r)) == r["hash"]
            ):
                keyed_seen = True
            elif key and not keyed_seen and record_hash(seq, r["prev_hash"], r) == r["hash"]:
                report.unkeyed += 1
            else:
                report.problems.append(
                    f"record {seq} was changed after it was written (its hash is not the "
                    "audit key's: edited, or the chain was recomputed without the key)"
                )
            # (Timestamps are not compared: nodes' clocks differ; the chain proves the order.)
            expected, prev = seq + 1, r["hash"]
            if seq == head_seq:
                at_head = (seq, prev)
    return at_head or (expected - 1, prev)


def checkpoint_mac(key: ChainKey | None, seq: int, digest: str) -> str:
    """What proves a purge checkpoint (R38) was written by a holder of the audit key."""
    payload = f"solent-audit-checkpoint:{seq}:{digest}".encode()
    return key.digest(payload) if key is not None else hashlib.sha256(payload).hexdigest()


def _start(key: ChainKey | None, head: Any, report: VerifyReport) -> tuple[int, str]:
    """Where the chain starts: after the purge checkpoint the head records, if any (a moved
    or forged checkpoint is a problem: it could hide deleted records)."""
    if head is None or head.base_seq is None:
        return 0, GENESIS
    seq, digest = int(head.base_seq), str(head.base_hash)
    if head.base_mac != checkpoint_mac(key, seq, digest):
        report.problems.append(
            f"the checkpoint of purged records (through record {seq}) is not the audit key's: "
            "it was changed, so records after it may have been deleted"
        )
    return seq, digest


_HEAD_ROW = (_h.seq, _h.hash, _h.key_id, _h.base_seq, _h.base_hash, _h.base_mac)


def verify(index: Index, batch: int = 5000) -> VerifyReport:
    """Walk the whole chain; every problem names the sequence number where it is seen."""
    report = VerifyReport()
    with index.read() as conn:
        key = key_of(conn)
        # The head first: records appended while we walk come after it and are checked as
        # chain links; the head must match the record it names.
        head = conn.execute(select(*_HEAD_ROW).where(_h.id == 1)).first()
        head_seq, head_hash = (int(head.seq), str(head.hash)) if head else (0, GENESIS)
        start = _start(key, head, report)
        last, prev = _check(key, _walk(conn, batch, start[0]), report, head_seq, start)
    sealed_by = head.key_id if head is not None else None
    if sealed_by is not None and key is None:
        report.problems.append(_NO_KEY)
    elif sealed_by is not None and key is not None and sealed_by != key.key_id:
        report.problems.append(
            "the trail was sealed with another audit key than this node's "
            "(wrong SOLENT_AUDIT_KEY / audit-key file, or the head was rewritten)"
        )
    if head_seq != last or head_hash != prev:
        report.problems.append(
            f"the trail ends at record {last} but {head_seq} were written "
            "(records at the end were deleted or the head was changed)"
        )
    if report.unkeyed:
        report.problems.append(
            f"records 1..{report.unkeyed} carry unkeyed SHA-256 hashes, which anyone with "
            "database access can recompute; if they were written before the upgrade to the "
            "keyed trail, run `solent audit seal` once (otherwise the chain was rewritten)"
        )
    return report


def seal(
    index: Index, batch: int = 5000, progress: Callable[[int], None] | None = None
) -> VerifyReport:
    """Re-chain every record under the key, once, after upgrading from unkeyed hashes.

    The existing chain is verified first (unkeyed prefix allowed); if it has any other problem
    nothing is written. One write transaction holds the head lock, so no record is appended
    meanwhile. Returns the report of the check made before sealing.
    """

    def op(conn: Connection) -> VerifyReport:
        key = key_of(conn)
        if key is None:
            raise AuditKeyError("sealing needs the audit key: open the archive with build_archive")
        h = t.audit_head.c
        head = conn.execute(select(*_HEAD_ROW).where(h.id == 1).with_for_update()).first()
        head_seq, head_hash = (int(head.seq), str(head.hash)) if head else (0, GENESIS)
        report = VerifyReport()
        start = _start(key, head, report)
        last, prev = _check(key, _walk(conn, batch, start[0]), report, head_seq, start)
        if head_seq != last or head_hash != prev:
            report.problems.append(f"the trail ends at record {last} but {head_seq} were written")
        sealed = head is not None and head.key_id == key.key_id and report.unkeyed == 0
        if report.problems or sealed:
            return report  # refused, or nothing to do: every record is already under this key
        (first, prev), n = start, 0
        for chunk in _walk(conn, batch, first):  # second pass: seq order unchanged by updates
            for r in chunk:
                digest = keyed_hash(key, int(r["seq"]), prev, r)
                conn.execute(
                    update(t.audit_log)
                    .where(t.audit_log.c.seq == r["seq"])
                    .values(prev_hash=prev, hash=digest)
                )
                prev = digest
            n += len(chunk)
            if progress is not None:
                progress(n)
        if head is None:
            conn.execute(insert(t.audit_head).values(id=1, seq=0, hash=GENESIS, key_id=key.key_id))
        else:
            conn.execute(update(t.audit_head).where(h.id == 1).values(hash=prev, key_id=key.key_id))
        return report

    return index.write(op)


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What ``purge`` did: records removed, and the new checkpoint (0: nothing removed)."""

    purged: int
    through_seq: int
    checkpoint: str
    problems: list[str]


def purge(
    index: Index,
    older_than: str,
    keep: Callable[[list[dict[str, Any]]], object],
    batch: int = 5000,
) -> PurgeReport:
    """Remove the records written before ``older_than`` (an ISO 8601 UTC stamp) from the start
    of the chain, after handing each batch to ``keep`` (the archive file), and move the
    checkpoint to the last one removed, sealed under the key, so ``verify`` still proves every
    record kept and that none after the checkpoint is missing (R38).

    Only a whole, intact, keyed chain is purged: one write transaction holds the head lock,
    verifies first and removes nothing if there is any problem. A record at or after
    ``older_than`` ends the purge, so a purge never leaves a gap in the chain.
    """

    def op(conn: Connection) -> PurgeReport:
        key = key_of(conn)
        if key is None:
            raise AuditKeyError("purging needs the audit key: open the archive with build_archive")
        head = conn.execute(select(*_HEAD_ROW).where(_h.id == 1).with_for_update()).first()
        if head is None:
            return PurgeReport(0, 0, GENESIS, [])
        report = VerifyReport()
        start = _start(key, head, report)
        last, prev = _check(key, _walk(conn, batch, start[0]), report, int(head.seq), start)
        if (int(head.seq), str(head.hash)) != (last, prev):
            report.problems.append(f"the trail ends at record {last} but {head.seq} were written")
        if report.unkeyed:
            report.problems.append("records carry unkeyed hashes: run `solent audit seal` first")
        if report.problems:
            return PurgeReport(0, start[0], start[1], report.problems)
        through, digest, n = start[0], start[1], 0
        for chunk in _walk(conn, batch, start[0]):
            old = _leading(chunk, older_than)
            if old:
                keep(old)
                conn.execute(
                    delete(t.audit_log).where(
                        t.audit_log.c.seq > through, t.audit_log.c.seq <= old[-1]["seq"]
                    )
                )
                through, digest, n = int(old[-1]["seq"]), str(old[-1]["hash"]), n + len(old)
            if len(old) < len(chunk):
                break
        if n:
            conn.execute(
                update(t.audit_head)
                .where(_h.id == 1)
                .values(
                    base_seq=through,
                    base_hash=digest,
                    base_mac=checkpoint_mac(key, through, digest),
                )
            )
        return PurgeReport(n, through, digest, [])

    return index.write(op)


def _leading(chunk: list[dict[str, Any]], older_than: str) -> list[dict[str, Any]]:
    """The records of ``chunk`` before the first one written at or after ``older_than``."""
    for i, r in enumerate(chunk):
        if str(r["at"]) >= older_than:
            return chunk[:i]
    return chunk


def search(
    index: Index,
    *,
    patient_issuer: str | None = None,
    patient_id: str | None = None,
    nhs_number: str | None = None,
    actor_name: str | None = None,
    study_uid: str | None = None,
    action: str | None = None,
    since: str | None = None,
    until: str | None = None,
    after_seq: int = 0,
    limit: int = 100,
    trusts: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Records matching the criteria, oldest first. ``trusts``: only those a privacy officer
    of these trusts may read (``trust_auditable``); None: every record."""
    c = t.audit_log.c
    conds: list[ColumnElement[bool]] = [c.seq > after_seq]
    if trusts is not None:
        conds.append(trust_auditable(sorted(trusts)))
    if patient_id:
        conds.append(c.patient_id == patient_id)
    if patient_issuer:
        conds.append(c.patient_issuer == patient_issuer)
    if nhs_number:
        conds.append(c.nhs_number == nhs_number)
    if actor_name:
        conds.append(c.actor_name == actor_name)
    if study_uid:
        conds.append(c.study_uid == study_uid)
    if action:
        conds.append(c.action == action)
    if since:
        conds.append(c.at >= since)
    if until:
        conds.append(c.at < until)
    q = select(t.audit_log).where(and_(*conds)).order_by(c.seq).limit(limit)
    with index.read() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def trust_auditable(trusts: Collection[str]) -> ColumnElement[bool]:
    """The records about the trusts' own patients (whoever acted); those of their own staff
    and nodes, except a refusal naming another trust's patient (the refused caller sent a
    UID or an ID, the record names the patient it resolved to, NHS number included: that
    is for the patient's trust to read); and the unattributed security events that name no
    patient (failed logins, unregistered HL7 senders: no trust to give them to)."""
    c = t.audit_log.c
    trusts = list(trusts)
    return or_(
        c.patient_issuer.in_(trusts),
        and_(c.actor_trust.in_(trusts), or_(c.patient_issuer.is_(None), c.outcome != "denied")),
        and_(c.actor_trust.is_(None), c.patient_issuer.is_(None)),
    )


def iter_records(index: Index, after_seq: int = 0, batch: int = 2000) -> Iterator[dict[str, Any]]:
    last = after_seq
    while True:
        rows = search(index, after_seq=last, limit=batch)
        if not rows:
            return
        yield from rows
        last = int(rows[-1]["seq"])


__all__ = [
    "GENESIS",
    "AuditKeyError",
    "ChainKey",
    "PurgeReport",
    "VerifyReport",
    "append",
    "iter_records",
    "purge",
    "seal",
    "search",
    "use_key",
    "verify",
]
