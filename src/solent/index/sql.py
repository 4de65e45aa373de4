"""The Index on SQLite (embedded default) and PostgreSQL, behind one class.

SQLite runs in WAL mode with ``synchronous=FULL`` (a commit survives power loss) and takes the
write lock up front with ``BEGIN IMMEDIATE``, so concurrent writers queue instead of failing
half-way. PostgreSQL retries serialization failures and deadlocks.

A *relaxed* write (``write(fn, relaxed=True)``) is committed without waiting for the disk: used
for records of reads (the audit of a query or a view), where an fsync per request would double
the latency of every QIDO-RS call. It survives a crash of Solent (the OS has the bytes) and is
made durable within ``RELAXED_SYNC_S``: on SQLite a flusher thread fsyncs the WAL file, on
PostgreSQL ``synchronous_commit=off`` bounds the window by the WAL writer (3 x wal_writer_delay).
Only a power loss or kernel crash inside that window can lose such a record; data changes are
never relaxed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.pool import QueuePool

from solent.domain.principal import Principal
from solent.domain.records import NodeRow, TrustRow
from solent.errors import AlreadyExists, IndexUnavailable, NotFound
from solent.index import access_stamp
from solent.index import schema as t

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_PG = {"40001", "40P01"}
#: A pooled PostgreSQL connection idle longer than this is pinged before use (issue 16): a
#: connection in steady use is not, which spared a SELECT 1 round trip per checkout (~7% of a
#: QIDO-RS node's time). One dropped while in use fails that statement; SQLAlchemy then
#: refreshes every older connection of the pool, and ``read_then_record`` retries once.
IDLE_PING_S = 10.0
#: Connections are replaced after this long whatever their use (server-side limits, failover).
POOL_RECYCLE_S = 1800
#: libpq TCP keepalives of every PostgreSQL connection (the pool's and the broadcast's). A NAT
#: or firewall between a node and the database drops idle flows silently (AWS: 350 s); a
#: pooled connection idle that long would hang its next statement for the kernel's
#: retransmission timeout (minutes), and a LISTEN connection hears nothing more. A probe every
#: 30 s keeps the flow, and a dead one fails within a minute (the kernel's default: two hours).
PG_KEEPALIVE: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
#: How long a relaxed commit may stay in the OS cache before it is fsynced (SQLite).
RELAXED_SYNC_S = 0.5


def now() -> datetime:
    return datetime.now(UTC)


def normalise_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class Index:
    """Connection handling and the queries every service shares."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalise_url(url)
        self.dialect = "sqlite" if self.url.startswith("sqlite") else "postgresql"
        self.engine = self._make_engine(echo)
        self._wal_sync: _WalSync | None = None
        #: SQLite file: appended to when a transaction changed access (index/access_stamp).
        self.access_stamp: Path | None = None
        self._schema_generation = 0  # bumped by migrate(): TEMP triggers are made again
        if self.dialect == "sqlite":
            path = self.url.split("///", 1)[1] if "///" in self.url else ""
            if path and path != ":memory:":
                self._wal_sync = _WalSync(Path(path + "-wal"))
                self.access_stamp = access_stamp.stamp_path(Path(path))

    def _make_engine(self, echo: bool) -> Engine:
        if self.dialect == "sqlite":
            path = self.url.split("///", 1)[1] if "///" in self.url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(
                self.url,
                echo=echo,
                connect_args={"timeout": 60, "check_same_thread": False},
                pool_size=8,
                max_overflow=8,
            )

            @event.listens_for(engine, "connect")
            def _connect(dbapi_conn: Any, _rec: Any) -> None:
                dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=60000")
                cur.close()

            @event.listens_for(engine, "begin")
            def _begin(conn: Connection) -> None:
                options = conn.get_execution_options()
                write = options.get("solent_write", False)
                if write:
                    # synchronous is per connection and may only change outside a transaction.
                    mode = "NORMAL" if options.get("solent_relaxed", False) else "FULL"
                    if conn.info.get("synchronous") != mode:
                        conn.exec_driver_sql(f"PRAGMA synchronous={mode}")
                        conn.info["synchronous"] = mode
                    if self.access_stamp is not None:
                        self._access_triggers(conn, options.get("solent_migrating", False))
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

            @event.listens_for(engine, "checkin")
            def _announce(_dbapi_conn: Any, record: Any) -> None:
                # After the commit (or rollback) of whatever the connection did.
                if self.access_stamp is not None:
                    access_stamp.announce_if_changed(record.info, self.access_stamp)

            return engine
        engine = create_engine(
            self.url,
            echo=echo,
            pool_size=10,
            max_overflow=20,
            pool_recycle=POOL_RECYCLE_S,
            connect_args=PG_KEEPALIVE,
        )

        @event.listens_for(engine, "checkin")
        def _checkin(_dbapi_conn: Any, record: Any) -> None:
            record.info["solent_idle_since"] = time.monotonic()

        @event.listens_for(engine, "checkout")
        def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
            since = record.info.get("solent_idle_since")
            if since is not None and time.monotonic() - since < IDLE_PING_S:
                return
            try:
                engine.dialect.do_ping(dbapi_conn)
            except Exception as exc:  # the pool then opens a fresh connection
                raise DisconnectionError(f"pooled connection is gone: {exc}") from exc

        return engine

    def _access_triggers(self, conn: Connection, migrating: bool) -> None:
        """Keep this SQLite connection's access-change triggers in step with the schema:
        none while migrating (tables are rebuilt under them), made again after a migration."""
        want = None if migrating else self._schema_generation
        if conn.info.get("access_triggers", -1) == want:
            return
        raw: Any = conn.connection.dbapi_connection
        access_stamp.drop(raw)
        conn.info["access_triggers"] = None
        if want is not None and access_stamp.install(raw, conn.info):
            conn.info["access_triggers"] = want

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def reads_at_once(self) -> bool:
        """True when a `read` now waits for no one: the index is a local SQLite file (a WAL
        reader takes no lock) and a pooled connection is idle (else checking one out could
        wait for another thread's). What an event loop may do; racy, so a hint only."""
        pool = self.engine.pool
        return self.dialect == "sqlite" and isinstance(pool, QueuePool) and pool.checkedin() > 0

    def write(
        self, fn: Callable[[Connection], T], *, attempts: int = 8, relaxed: bool = False
    ) -> T:
        """Run ``fn`` in one write transaction, retrying transient conflicts.

        ``relaxed``: commit without waiting for the disk (records of reads only; see above).
        """
        for attempt in range(1, attempts + 1):
            try:
                with (
                    self.engine.connect().execution_options(
                        solent_write=True, solent_relaxed=relaxed
                    ) as conn,
                    conn.begin(),
                ):
                    if relaxed and self.dialect == "postgresql":
                        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                    result = fn(conn)
                if relaxed and self._wal_sync is not None:
                    self._wal_sync.due()
                return result
            except OperationalError as exc:
                if attempt == attempts or not self._transient(exc):
                    raise IndexUnavailable(f"index write failed: {exc.orig}") from exc
            except IntegrityError:
                # A concurrent writer inserted the same patient/study/series/instance first;
                # the retry sees its row. Not retried forever: a real constraint bug surfaces.
                if attempt >= 3:
                    raise
            except DBAPIError as exc:
                if attempt == attempts or not self._transient(exc):
                    raise
            time.sleep(min(0.5, 0.005 * 2**attempt) * random.random())
        raise AssertionError("unreachable")

    def read_then_record(self, read: Callable[[Connection], T], record: Callable[[T], None]) -> T:
        """``read`` in a read transaction, then ``record(value)`` (an audit record of what was
        read, appended in a transaction of its own: see ``index.audit.append_alone``).

        Nothing read is returned before the record commits. The read is retried once when its
        pooled connection turns out to be gone (connections in steady use are not pinged).
        Readers never hold the audit chain's lock while they read.
        """
        for attempt in (1, 2):
            try:
                with self.read() as conn:
                    value = read(conn)
                break
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        record(value)
        return value

    def _transient(self, exc: DBAPIError) -> bool:
        if self.dialect == "sqlite":
            return "locked" in str(exc.orig) or "busy" in str(exc.orig)
        code = getattr(exc.orig, "sqlstate", None)
        return code in RETRYABLE_PG

    def migrate(self) -> None:
        from solent.index.migrate import upgrade

        upgrade(self)
        self._schema_generation += 1

    def close(self) -> None:
        if self._wal_sync is not None:
            self._wal_sync.close()
        self.engine.dispose()

    # -- trusts and nodes ---------------------------------------------------------------

    def add_trust(self, code: str, name: str) -> TrustRow:
        def op(conn: Connection) -> TrustRow:
            if conn.execute(select(t.trust.c.code).where(t.trust.c.code == code)).first():
                raise AlreadyExists(f"trust {code} already exists")
            conn.execute(insert(t.trust).values(code=code, name=name, created_at=now()))
            return TrustRow(code, name)

        return self.write(op)

    def list_trusts(self) -> list[TrustRow]:
        with self.read() as conn:
            rows = conn.execute(select(t.trust.c.code, t.trust.c.name).order_by(t.trust.c.code))
            return [TrustRow(r.code, r.name) for r in rows]

    def get_trust(self, code: str) -> TrustRow | None:
        with self.read() as conn:
            r = conn.execute(select(t.trust).where(t.trust.c.code == code)).first()
            return TrustRow(r.code, r.name) if r else None

    def add_node(
        self,
        ae_title: str,
        host: str,
        port: int,
        trust_code: str,
        allow: Sequence[str],
        tls_identity: str | None = None,
        *,
        outside: bool = False,
    ) -> NodeRow:
        node = NodeRow(
            ae_title,
            host,
            port,
            trust_code,
            "store" in allow,
            "query" in allow,
            "retrieve" in allow,
            tls_identity or None,
            "notify" in allow,
            outside,
        )

        def op(conn: Connection) -> NodeRow:
            if not conn.execute(select(t.trust.c.code).where(t.trust.c.code == trust_code)).first():
                raise NotFound(f"trust {trust_code} does not exist; add it with `solent trust add`")
            if conn.execute(
                select(t.dicom_node.c.ae_title).where(t.dicom_node.c.ae_title == ae_title)
            ).first():
                raise AlreadyExists(f"DICOM node {ae_title} already exists; remove it first")
            conn.execute(
                insert(t.dicom_node).values(
                    ae_title=ae_title,
                    host=host,
                    port=port,
                    trust_code=trust_code,
                    allow_store=node.allow_store,
                    allow_query=node.allow_query,
                    allow_retrieve=node.allow_retrieve,
                    tls_identity=node.tls_identity,
                    allow_notify=node.allow_notify,
                    outside=node.outside,
                    created_at=now(),
                )
            )
            return node

        return self.write(op)

    def list_nodes(self) -> list[NodeRow]:
        with self.read() as conn:
            rows = conn.execute(select(t.dicom_node).order_by(t.dicom_node.c.ae_title))
            return [self._node(r) for r in rows]

    def get_node(self, ae_title: str) -> NodeRow | None:
        with self.read() as conn:
            r = conn.execute(
                select(t.dicom_node).where(t.dicom_node.c.ae_title == ae_title)
            ).first()
            return self._node(r) if r else None

    @staticmethod
    def _node(r: Any) -> NodeRow:
        return NodeRow(
            r.ae_title,
            r.host,
            r.port,
            r.trust_code,
            r.allow_store,
            r.allow_query,
            r.allow_retrieve,
            r.tls_identity,
            bool(r.allow_notify),
            bool(r.outside),
        )

    def remove_node(self, ae_title: str) -> None:
        def op(conn: Connection) -> None:
            res = conn.execute(delete(t.dicom_node).where(t.dicom_node.c.ae_title == ae_title))
            if res.rowcount == 0:
                raise NotFound(f"DICOM node {ae_title} does not exist")

        self.write(op)

    # -- reads used by ingest, check and stats ------------------------------------------

    def instance_digest(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """(sha256, blob_key) of a stored instance, or None."""
        with self.read() as conn:
            r = conn.execute(
                select(t.instance.c.sha256, t.instance.c.blob_key).where(
                    t.instance.c.sop_instance_uid == sop_instance_uid
                )
            ).first()
            return (r.sha256, r.blob_key) if r else None

    def blob_referenced(self, blob_key: str) -> bool:
        """An instance, or an instance withdrawn by an IOCM note (kept by policy), uses it."""
        with self.read() as conn:
            return any(
                conn.execute(select(c).where(c == blob_key).limit(1)).first() is not None
                for c in (t.instance.c.blob_key, t.rejected_instance.c.blob_key)
            )

    def iter_blob_refs(self, batch: int = 5000) -> Iterator[tuple[str, str, int]]:
        """(sop_instance_uid, blob_key, size) of every instance, in pages."""
        last = 0
        while True:
            with self.read() as conn:
                rows = conn.execute(
                    select(
                        t.instance.c.pk,
                        t.instance.c.sop_instance_uid,
                        t.instance.c.blob_key,
                        t.instance.c.size_bytes,
                    )
                    .where(t.instance.c.pk > last)
                    .order_by(t.instance.c.pk)
                    .limit(batch)
                ).all()
            if not rows:
                return
            for r in rows:
                yield r.sop_instance_uid, r.blob_key, r.size_bytes
            last = rows[-1].pk

    def stats(self) -> dict[str, int]:
        with self.read() as conn:
            out = {}
            for name, table in (
                ("trusts", t.trust),
                ("patients", t.patient),
                ("studies", t.study),
                ("series", t.series),
                ("instances", t.instance),
            ):
                out[name] = int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            out["bytes"] = int(
                conn.execute(
                    select(func.coalesce(func.sum(t.instance.c.size_bytes), 0))
                ).scalar_one()
            )
            return out

    def append_event(
        self, conn: Connection, kind: str, principal: Principal, **fields: Any
    ) -> None:
        detail = fields.pop("detail", None)
        conn.execute(
            insert(t.change_feed).values(
                at=now(),
                kind=kind,
                principal=principal.describe(),
                detail=json.dumps(detail, separators=(",", ":")) if detail is not None else None,
                **fields,
            )
        )

    def events_since(self, seq: int, limit: int = 1000) -> list[dict[str, Any]]:
        with self.read() as conn:
            rows = conn.execute(
                select(t.change_feed)
                .where(t.change_feed.c.seq > seq)
                .order_by(t.change_feed.c.seq)
                .limit(limit)
            ).mappings()
            return [dict(r) for r in rows]

    def delete_instance_rows(
        self,
        sop_instance_uid: str,
        *,
        audit: Callable[[Connection, str], object] | None = None,
    ) -> str | None:
        """Remove an instance's rows (used by `solent check --repair` for missing blobs).

        ``audit(conn, study_uid)`` is called in the same transaction before the rows go, so
        the deletion and its audit record (naming the patient) commit together."""

        def op(conn: Connection) -> str | None:
            r = conn.execute(
                select(
                    t.instance.c.pk,
                    t.instance.c.series_pk,
                    t.instance.c.blob_key,
                    t.instance.c.size_bytes,
                ).where(t.instance.c.sop_instance_uid == sop_instance_uid)
            ).first()
            if r is None:
                return None
            study_pk = conn.execute(
                select(t.series.c.study_pk).where(t.series.c.pk == r.series_pk)
            ).scalar_one()
            if audit is not None:
                study_uid = conn.execute(
                    select(t.study.c.study_uid).where(t.study.c.pk == study_pk)
                ).scalar_one()
                audit(conn, str(study_uid))
            self.remove_instance(conn, r.pk, r.series_pk, study_pk, r.size_bytes)
            return str(r.blob_key)

        return self.write(op)

    @classmethod
    def remove_instance(
        cls, conn: Connection, pk: int, series_pk: int, study_pk: int, size_bytes: int
    ) -> None:
        """Take one instance's rows out of the query tables, aggregates kept true (a repair of
        a missing blob, an IOCM rejection), in the caller's transaction."""
        conn.execute(delete(t.instance_metadata).where(t.instance_metadata.c.instance_pk == pk))
        conn.execute(delete(t.instance).where(t.instance.c.pk == pk))
        conn.execute(
            update(t.series)
            .where(t.series.c.pk == series_pk)
            .values(num_instances=t.series.c.num_instances - 1)
        )
        conn.execute(
            update(t.study)
            .where(t.study.c.pk == study_pk)
            .values(
                num_instances=t.study.c.num_instances - 1,
                size_bytes=t.study.c.size_bytes - size_bytes,
            )
        )
        cls.drop_if_empty(conn, series_pk, study_pk)

    @staticmethod
    def drop_if_empty(conn: Connection, series_pk: int, study_pk: int) -> None:
        """Keep the aggregates true after a removal: no empty series or study is listed."""
        se, st = t.series.c, t.study.c
        if conn.execute(select(se.num_instances).where(se.pk == series_pk)).scalar_one() > 0:
            return
        conn.execute(delete(t.series).where(se.pk == series_pk))
        remaining = select(se.modality).where(se.study_pk == study_pk)
        left = set(conn.execute(remaining).scalars())
        old = conn.execute(select(st.modalities).where(st.pk == study_pk)).scalar_one() or ""
        conn.execute(
            update(t.study)
            .where(st.pk == study_pk)
            .values(
                num_series=st.num_series - 1,
                modalities="\\".join(m for m in old.split("\\") if m and m in left),
            )
        )
        if conn.execute(select(st.num_instances).where(st.pk == study_pk)).scalar_one() <= 0:
            conn.execute(delete(t.study).where(st.pk == study_pk))

    def mark_nhs_verified(self, issuer: str, local_id: str) -> None:
        """Record that the trust's record carries a PDS-traced NHS number (NSTS01)."""

        def op(conn: Connection) -> None:
            conn.execute(
                update(t.patient)
                .where(t.patient.c.issuer == issuer, t.patient.c.local_id == local_id)
                .values(nhs_number_verified=True, updated_at=now())
            )

        self.write(op)


class _WalSync:
    """Fsyncs SQLite's WAL file at most ``RELAXED_SYNC_S`` after a relaxed commit.

    fsync works on the file, whichever descriptor wrote it, so syncing the WAL makes every
    relaxed commit before it durable. SQLite has no timer of its own for this: with
    synchronous=NORMAL it syncs only at checkpoints.
    """

    def __init__(self, wal: Path) -> None:
        self.wal = wal
        self._pending = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.syncs = 0  # fsyncs done (observable by tests and metrics)

    def due(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._closed:
                    self._thread = threading.Thread(
                        target=self._run, name="solent-wal-sync", daemon=True
                    )
                    self._thread.start()
        self._pending.set()

    def _run(self) -> None:
        while not self._closed:
            self._pending.wait()
            time.sleep(RELAXED_SYNC_S)
            self._pending.clear()
            self.sync()

    def sync(self) -> None:
        try:
            fd = os.open(self.wal, os.O_RDONLY)
        except FileNotFoundError:
            return  # checkpointed and removed: the database file holds (and synced) it all
        try:
            os.fsync(fd)
            self.syncs += 1
        finally:
            os.close(fd)

    def close(self) -> None:
        self._closed = True
        if self._pending.is_set():
            self.sync()
        self._pending.set()
