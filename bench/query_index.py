"""Query engine latency at 10k and 100k studies, SQLite and PostgreSQL.

`python -m bench query [--sizes 10000,100000] [--backends sqlite,postgresql] [--repeat 50]`

Fills an index with `solent.index.bulk.fill_synthetic` (four trusts, valid test-range NHS
numbers, 2 series per study) and times `QueryService.find` — the call C-FIND and QIDO-RS make —
for the three queries a viewer or modality sends most:

* PatientID + IssuerOfPatientID (all studies of one patient),
* StudyDate one-year range + ModalitiesInStudy=CT, limit 100,
* all studies, limit 100 (the QIDO /studies landing page).

Each is timed bare ("engine": QueryService without an access rule) and, with ``--access``,
with the access rule of a ZZA node ANDed in (what a real caller gets; services/access.py). By
default the access rule is timed up to 10k studies only (``--access auto``).
PostgreSQL runs in a fresh database that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from solent.domain.attributes import Level
from solent.domain.matching import Query, parse_query
from solent.domain.principal import Principal, PrincipalKind
from solent.index.bulk import SyntheticSummary, fill_synthetic
from solent.index.sql import Index
from solent.services.access import AccessService
from solent.services.audit import AuditTrail
from solent.services.query import QueryService

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
SYSTEM = Principal(PrincipalKind.SYSTEM, "bench", None)


@contextmanager
def backend_url(name: str, pg_admin: str) -> Iterator[str]:
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


def queries(summary: SyntheticSummary, rng: random.Random) -> dict[str, Callable[[int], Query]]:
    patients = summary.sample_patients
    years = list(range(2011, 2026))

    def by_patient(i: int) -> Query:
        issuer, local_id = patients[(i * 7919) % len(patients)]
        return parse_query(Level.STUDY, {"PatientID": local_id, "IssuerOfPatientID": issuer})

    def date_modality(i: int) -> Query:
        year = years[i % len(years)]
        keys = {"StudyDate": f"{year}0101-{year}1231", "ModalitiesInStudy": "CT"}
        return parse_query(Level.STUDY, keys)

    def everything(i: int) -> Query:
        return parse_query(Level.STUDY, {})

    return {
        "PatientID+issuer": by_patient,
        "date range + modality, limit 100": date_modality,
        "all studies, limit 100": everything,
    }


def run(backend: str, sizes: list[int], repeat: int, pg_admin: str, access: str) -> list[str]:
    lines: list[str] = []
    with backend_url(backend, pg_admin) as url:
        index = Index(url)
        index.migrate()
        bare = QueryService(index)
        guarded = QueryService(index, AccessService(index, AuditTrail(index)))
        node = Principal(PrincipalKind.NODE, "BENCH_ZZA", "ZZA")
        summary = SyntheticSummary()
        have = 0
        rng = random.Random(1)
        for size in sorted(sizes):
            started = time.perf_counter()
            grown = fill_synthetic(index, size - have, seed=len(lines) + 1)
            fill_s = time.perf_counter() - started
            summary.sample_patients += grown.sample_patients
            have = size
            lines.append(
                f"{backend:<10} {size:>7} studies  (bulk fill +{grown.studies} in {fill_s:.1f}s)"
            )
            variants = [(SYSTEM, bare, "engine")]
            if access == "on" or (access == "auto" and size <= 10_000):
                variants.append((node, guarded, "+access"))
            for label, make in queries(summary, rng).items():
                for who, service, tag in variants:
                    limit = None if label.startswith("PatientID") else 100

                    def once(i: int, make=make, service=service, who=who, limit=limit) -> int:  # type: ignore[no-untyped-def]
                        res = service.find(who, make(i), limit=limit, max_results=1000)
                        return len(res.rows)

                    med, p95 = timed(once, repeat)
                    lines.append(f"  {label:<34} {tag:<8} median {med:7.2f} ms   p95 {p95:7.2f} ms")
            print("\n".join(lines[-1 - 3 * len(variants) :]), flush=True)
        index.close()
    return lines


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
    ap.add_argument(
        "--postgres-url",
        default=os.environ.get("SOLENT_BENCH_POSTGRES_URL", DEFAULT_PG),
        help="a database to connect to for CREATE/DROP DATABASE of a scratch database",
    )
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(f"query engine latency, {args.repeat} runs per query (QueryService.find)", flush=True)
    for backend in args.backends.split(","):
        run(backend.strip(), sizes, args.repeat, args.postgres_url, args.access)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
