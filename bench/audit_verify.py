"""`solent audit verify` speed: the keyed (HMAC-SHA-256) chain against the old plain SHA-256.

`python -m bench audit [--records 100000]`

Fills two fresh SQLite indexes with the same synthetic audit records (realistic fields: a query
with its keys, a patient, a study), one chained under an audit key, one without (how the chain
was hashed before revision 0002), and times ``verify`` on each. Prints records per second.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sqlalchemy import Connection

from solent.domain.principal import Principal, PrincipalKind
from solent.index import audit as chain
from solent.index.sql import Index
from solent.services.audit import AuditAction, PatientRef, audit_fields

BATCH = 5000


def _fill(index: Index, records: int) -> None:
    who = Principal(PrincipalKind.USER, "drza", "ZZA", frozenset({"clinician"}), "10.0.0.7")
    done = 0
    while done < records:
        n = min(BATCH, records - done)

        def op(conn: Connection, start: int = done, n: int = n) -> None:
            for i in range(start, start + n):
                fields = audit_fields(
                    who,
                    AuditAction.QUERY,
                    patient=PatientRef("ZZA", f"A{i:07d}", "9434765919"),
                    study_uid=f"1.2.826.0.1.3680043.8.498.{i}",
                    detail={"channel": "qido", "keys": {"PatientID": f"A{i:07d}"}, "matches": 3},
                )
                chain.append(conn, fields)

        index.write(op)
        done += n
        print(f"  filled {done}/{records}", end="\r", flush=True)
    print()


def _time_verify(index: Index) -> tuple[float, chain.VerifyReport]:
    started = time.perf_counter()
    report = chain.verify(index)
    return time.perf_counter() - started, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench audit", description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="solent-bench-audit-") as tmp:
        results = {}
        for name, key in (("plain SHA-256", None), ("HMAC-SHA-256", b"k" * 32)):
            index = Index(f"sqlite:///{Path(tmp) / (name[:4] + '.db')}")
            index.migrate()
            if key is not None:
                chain.use_key(index, key)
            print(f"{name}: filling {args.records} records")
            _fill(index, args.records)
            seconds, report = _time_verify(index)
            assert report.intact and report.records == args.records, report.problems[:3]
            results[name] = seconds
            index.close()
        print(f"\naudit verify of {args.records} records (SQLite, one process):")
        for name, seconds in results.items():
            print(f"  {name:<14} {seconds:6.2f} s  {args.records / seconds:>9,.0f} records/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
