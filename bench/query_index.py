"""Query engine latency at 10k and 100k (up to 10 M) studies, SQLite and PostgreSQL.

`python -m bench query [--sizes 10000,100000] [--backends sqlite,postgresql] [--repeat 50]
[--access auto|on|off] [--http [--clients 10] [--http-workers 1,2]] [--database URL]`

SQLite is filled with `solent.index.bulk.fill_synthetic` (four trusts, valid test-range NHS
numbers, 2 series per study); PostgreSQL with `solent.index.bulk_pg.fill_region`, generated
inside the server (six trusts of unequal size, people with several studies and records at two
trusts, links, a department's modality mix, eight years of dates; 10 M studies in ~15 min).
It times `QueryService.find` — the call C-FIND and QIDO-RS make — for the three queries a
viewer or modality sends most:

* PatientID + IssuerOfPatientID (all studies of one patient),
* StudyDate one-year range + ModalitiesInStudy=CT, limit 100,
* all studies, limit 100 (the QIDO /studies landing page).

Each is timed bare ("engine": QueryService without an access rule) and, with ``--access``,
with the access rule of a ZZA node ANDed in (what a real caller gets; services/access.py). By
default the access rule is timed up to 10k studies only (``--access auto``).
PostgreSQL runs in a fresh database per size that is dropped afterwards, or in ``--database``
(filled when empty, kept: fill once, measure several times; drop it yourself).

``--http`` also times the same queries as QIDO-RS through a `solent serve` node on that index,
with 10 concurrent clients (a user of trust ZZA: the access rule with a user's break-glass
grants), and prints p50/p95 per shape and the requests per second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from solent.domain.attributes import Level
from solent.domain.matching import parse_query
from solent.domain.principal import Principal, PrincipalKind
from solent.index import audit as audit_chain
from solent.index.bulk import SyntheticSummary, fill_synthetic
from solent.index.bulk_pg import fill_region, summarise
from solent.index.sql import Index
from solent.services.access import AccessService
from solent.services.audit import AuditTrail
from solent.services.query import QueryService

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
#: One audit key for this process and the HTTP node: the trail is sealed with it (issue 11)
#: and a kept ``--database`` is opened again by later runs.
AUDIT_KEY = b"bench-query audit key, not a secret"
SYSTEM = Principal(PrincipalKind.SYSTEM, "bench", None)


@contextmanager
def backend_url(name: str, pg_admin: str, keep: str | None) -> Iterator[str]:
    if name == "postgresql" and keep:
        yield keep
        return
    if name == "sqlite":
        with tempfile.TemporaryDirectory(prefix="solent-bench-query-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'index.db'}"
        return
    import psycopg
    from psycopg import sql

    db = f"solent_bench_query_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    try:
        yield pg_admin.rsplit("/", 1)[0] + "/" + db
    finally:
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
            )


def timed(fn: Callable[[int], object], repeat: int) -> tuple[float, float]:
    fn(0)  # warm the pool and the plan cache
    samples = []
    for i in range(repeat):
        started = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    return statistics.median(samples), p95


YEARS = list(range(2019, 2026))  # within both fills' date spans


def query_keys(summary: SyntheticSummary) -> dict[str, Callable[[int], dict[str, str]]]:
    """The benchmark's shapes as DICOM matching keys, the i-th instance of each."""
    patients = summary.sample_patients

    def by_patient(i: int) -> dict[str, str]:
        issuer, local_id = patients[(i * 7919) % len(patients)]
        return {"PatientID": local_id, "IssuerOfPatientID": issuer}

    def date_modality(i: int) -> dict[str, str]:
        year = YEARS[i % len(YEARS)]
        return {"StudyDate": f"{year}0101-{year}1231", "ModalitiesInStudy": "CT"}

    return {
        "PatientID+issuer": by_patient,
        "date range + modality, limit 100": date_modality,
        "all studies, limit 100": lambda i: {},
    }


def timed_variants(
    index: Index, summary: SyntheticSummary, repeat: int, with_access: bool
) -> list[str]:
    """In process: each shape through QueryService.find, bare and with a ZZA node's rule."""
    bare = QueryService(index)
    guarded = QueryService(index, AccessService(index, AuditTrail(index)))
    node = Principal(PrincipalKind.NODE, "BENCH_ZZA", "ZZA")
    variants = [(SYSTEM, bare, "engine")]
    if with_access:
        variants.append((node, guarded, "+access"))
    lines = []
    for label, keys in query_keys(summary).items():
        for who, service, tag in variants:
            limit = None if label.startswith("PatientID") else 100

            def once(i: int, keys=keys, service=service, who=who, limit=limit) -> int:  # type: ignore[no-untyped-def]
                query = parse_query(Level.STUDY, keys(i))
                return len(service.find(who, query, limit=limit, max_results=1000).rows)

            med, p95 = timed(once, repeat)
            lines.append(f"  {label:<34} {tag:<8} median {med:7.2f} ms   p95 {p95:7.2f} ms")
            print(lines[-1], flush=True)
    return lines


def fill(backend: str, index: Index, size: int, have: int, seed: int) -> SyntheticSummary:
    if backend == "postgresql":
        if have:
            raise ValueError("a PostgreSQL size is filled in a fresh database")
        return fill_region(index, size, seed=seed)
    return fill_synthetic(index, size - have, seed=seed)


def existing(index: Index) -> SyntheticSummary | None:
    """The sample of an index filled by an earlier run (``--database``), or None when empty."""
    with index.read() as conn:
        count = int(conn.exec_driver_sql("SELECT count(*) FROM study").scalar_one())
    return summarise(index, 1) if count else None


def run_size(
    backend: str, index: Index, size: int, have: int, args: argparse.Namespace
) -> SyntheticSummary:
    started = time.perf_counter()
    summary = existing(index) if args.database else None
    if summary is None:
        summary = fill(backend, index, size, have, seed=size % 97 + 1)
        note = f"bulk fill {summary.studies} in {time.perf_counter() - started:.1f}s"
    else:
        note = f"existing index, {summary.studies} studies, {summary.patients} records"
    print(f"{backend:<10} {size:>8} studies  ({note})", flush=True)
    with_access = args.access == "on" or (args.access == "auto" and size <= 10_000)
    timed_variants(index, summary, args.repeat, with_access)
    if args.http:
        from bench.query_http import timed_http

        for workers in args.http_workers:
            timed_http(
                index.url,
                AUDIT_KEY,
                summary,
                query_keys(summary),
                args.repeat,
                args.clients,
                workers,
            )
    return summary


def run(backend: str, sizes: list[int], args: argparse.Namespace) -> None:
    if backend == "postgresql":
        for size in sorted(sizes):  # each size in its own database: filled inside the server
            with backend_url(backend, args.postgres_url, args.database) as url:
                index = Index(url)
                audit_chain.use_key(index, AUDIT_KEY)
                try:
                    index.migrate()
                    run_size(backend, index, size, 0, args)
                finally:
                    index.close()
        return
    with backend_url(backend, args.postgres_url, None) as url:
        index = Index(url)
        audit_chain.use_key(index, AUDIT_KEY)
        index.migrate()
        have = 0
        summary = SyntheticSummary()
        for size in sorted(sizes):
            grown = run_size(backend, index, size, have, args)
            summary.sample_patients += grown.sample_patients
            have = size
        index.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench query", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="index sizes in studies (ascending)")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--repeat", type=int, default=50, help="timed runs per query")
    ap.add_argument(
        "--access",
        choices=("auto", "on", "off"),
        default="auto",
        help="also time with a node's access rule (auto: up to 10k studies)",
    )
    ap.add_argument("--http", action="store_true", help="also time QIDO-RS through a node")
    ap.add_argument("--clients", type=int, default=10, help="concurrent HTTP clients")
    ap.add_argument(
        "--http-workers",
        default="1",
        type=lambda v: [int(n) for n in v.split(",") if n],
        help="HTTP processes of the node (SOLENT_HTTP_WORKERS), comma list: each is timed",
    )
    ap.add_argument(
        "--postgres-url",
        default=os.environ.get("SOLENT_BENCH_POSTGRES_URL", DEFAULT_PG),
        help="a database to connect to for CREATE/DROP DATABASE of a scratch database",
    )
    ap.add_argument(
        "--database",
        default="",
        help="PostgreSQL URL of a database to fill once and keep (one size only)",
    )
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.database and len(sizes) != 1:
        ap.error("--database takes one size")
    print(f"query engine latency, {args.repeat} runs per query (QueryService.find)", flush=True)
    for backend in args.backends.split(","):
        run(backend.strip(), sizes, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
