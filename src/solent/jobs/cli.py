"""`solent jobs list | retry | stats | work`: background jobs for administrators (issue 16).

Goes through `Services.jobs` only, as the CLI principal (a local administrator).
"""

from __future__ import annotations

import argparse
import getpass
import json
from typing import Any

from solent.domain.principal import Principal, PrincipalKind
from solent.settings import Settings

STATUSES = ("todo", "doing", "succeeded", "failed", "cancelled", "aborted")


def register(sub: Any) -> None:
    jobs = sub.add_parser("jobs", help="background jobs: list, retry, stats, work")
    act = jobs.add_subparsers(dest="action", required=True)
    ls = act.add_parser(
        "list", help="jobs, newest first (on SQLite: those that used all their attempts)"
    )
    ls.add_argument("--status", choices=STATUSES)
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_list)
    rt = act.add_parser("retry", help="run a failed job again now")
    rt.add_argument("job_id", type=int)
    rt.set_defaults(handler=_retry)
    st = act.add_parser("stats", help="jobs by task and status; change-feed backlog per consumer")
    st.add_argument("--json", action="store_true")
    st.set_defaults(handler=_stats)
    wk = act.add_parser("work", help="run jobs in the foreground (a worker without HTTP)")
    wk.add_argument("--until-idle", action="store_true", help="stop once no job is waiting")
    wk.set_defaults(handler=_work)


def _principal() -> Principal:
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return Principal(PrincipalKind.SYSTEM, f"cli:{who}", None)


def _services(settings: Settings) -> Any:
    from solent.app import build_archive

    # No migration or bucket set-up from a worker or an inspection: `solent serve` and
    # `solent db upgrade` own those, and a worker must start even while the store is down.
    return build_archive(settings, migrate=False).services


def _list(args: argparse.Namespace, settings: Settings) -> int:
    rows = _services(settings).jobs.list(_principal(), args.status, args.limit)
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
        return 0
    for r in rows:
        print(f"{r.id:>8}  {r.status:<10} {r.attempts:>2}  {r.task}  {json.dumps(r.args)}")
    if not rows:
        print("no jobs")
    return 0


def _retry(args: argparse.Namespace, settings: Settings) -> int:
    _services(settings).jobs.retry(_principal(), args.job_id)
    print(f"job {args.job_id} will run again")
    return 0


def _stats(args: argparse.Namespace, settings: Settings) -> int:
    stats = _services(settings).jobs.stats(_principal())
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"queue: {stats['backend']}")
    for task, by_status in sorted(stats.get("jobs", {}).items()):
        counts = ", ".join(f"{s} {n}" for s, n in sorted(by_status.items()))
        print(f"  {task}: {counts}")
    for consumer, feed in stats["feed"].items():
        print(
            f"  consumer {consumer}: at event {feed['cursor']} of {feed['feed_head']} "
            f"(backlog {feed['backlog']})"
        )
    return 0


def _work(args: argparse.Namespace, settings: Settings) -> int:
    _services(settings).jobs.work(_principal(), until_idle=args.until_idle)
    print("worker stopped")
    return 0
