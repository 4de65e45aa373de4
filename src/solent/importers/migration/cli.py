"""`solent migrate source add|list`, `inventory`, `run` (with `--dry-run`), `verify`.

The commands get ``Services`` from the composition root and nothing else; the principal is the
migration importer acting for the source's trust, so every stored instance is audited as such.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from solent.domain.principal import Principal, PrincipalKind
from solent.errors import InvalidInput
from solent.settings import Settings


def register(sub: Any) -> None:
    m = sub.add_parser("migrate", help="consolidate legacy PACS into this archive")
    act = m.add_subparsers(dest="action", required=True)

    src = act.add_parser("source", help="legacy archives to migrate from")
    sact = src.add_subparsers(dest="source_action", required=True)
    add = sact.add_parser("add", help="register (or update) a source and its trust")
    add.add_argument("name")
    where = add.add_mutually_exclusive_group(required=True)
    where.add_argument("--dimse", metavar="AE@HOST:PORT", help="a DIMSE archive (C-FIND, C-GET)")
    where.add_argument("--dicomweb", metavar="URL", help="a DICOMweb archive (QIDO-RS, WADO-RS)")
    where.add_argument("--folder", type=Path, help="a folder or DICOMDIR export")
    add.add_argument("--trust", required=True, help="trust whose hospital numbers it holds")
    add.add_argument(
        "--nhs-traced",
        action="store_true",
        help="its NHS numbers were traced on PDS (lets records link across trusts)",
    )
    add.add_argument("--calling-ae", default="SOLENT", help="our AE title towards a DIMSE source")
    add.add_argument("--associations", type=int, default=2, help="concurrent associations")
    add.add_argument("--rate", type=int, default=0, help="instances/s at most (0: no limit)")
    add.add_argument("--hours", help="transfer window, e.g. 19:00-07:00 (default: any time)")
    add.set_defaults(handler=_source_add)
    ls = sact.add_parser("list", help="registered sources")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_source_list)

    inv = act.add_parser("inventory", help="list what a source holds; export CSV / JSON")
    inv.add_argument("name")
    inv.add_argument("--csv", type=Path, help="write the inventory as CSV")
    inv.add_argument("--json", type=Path, help="write the inventory as JSON")
    inv.set_defaults(handler=_inventory)

    run = act.add_parser("run", help="inventory, reconcile identities, transfer (resumable)")
    run.add_argument("name")
    run.add_argument("--dry-run", action="store_true", help="say what would happen; move nothing")
    run.add_argument("--oldest-first", action="store_true", help="default: newest studies first")
    run.add_argument("--json", action="store_true", help="JSON progress lines on stdout")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(handler=_run)

    exc = act.add_parser(
        "exclude", help="leave instances the source can never deliver out, with a reason"
    )
    exc.add_argument("name")
    exc.add_argument("sop_uids", nargs="+", metavar="SOP_INSTANCE_UID")
    exc.add_argument("--reason", required=True, help="why (kept in the report and the audit)")
    exc.set_defaults(handler=_exclude)
    inc = act.add_parser("include", help="undo exclude: fetch these instances on the next run")
    inc.add_argument("name")
    inc.add_argument("sop_uids", nargs="+", metavar="SOP_INSTANCE_UID")
    inc.set_defaults(handler=_include)

    ver = act.add_parser("verify", help="source vs archive report; exit 1 while unresolved")
    ver.add_argument("name")
    ver.add_argument("--html", type=Path)
    ver.add_argument("--csv", type=Path)
    ver.add_argument("--json", action="store_true", help="print the report as JSON")
    ver.set_defaults(handler=_verify)


def _services(settings: Settings) -> Any:
    from solent.app import build_archive

    return build_archive(settings).services


def _principal(trust: str | None) -> Principal:
    return Principal(PrincipalKind.IMPORTER, "solent-migrate", trust)


def _source_add(args: argparse.Namespace, settings: Settings) -> int:
    from solent.importers.migration.sources import parse_dimse_address
    from solent.services.migration import Source

    if args.dimse:
        parse_dimse_address(args.dimse)
        kind, address = "dimse", args.dimse
    elif args.dicomweb:
        if not args.dicomweb.startswith(("http://", "https://")):
            raise InvalidInput("--dicomweb takes the base URL, e.g. https://pacs/dicom-web")
        kind, address = "dicomweb", args.dicomweb.rstrip("/")
    else:
        kind, address = "folder", str(args.folder.resolve())
    if not args.name or len(args.name) > 64:
        raise InvalidInput("a source name is 1-64 characters")
    services = _services(settings)
    services.migration.add_source(
        _principal(args.trust),
        Source(
            name=args.name,
            kind=kind,
            address=address,
            trust=args.trust,
            nhs_traced=args.nhs_traced,
            calling_ae=args.calling_ae,
            associations=args.associations,
            rate=args.rate,
            hours=args.hours,
        ),
    )
    print(f"source {args.name}: {kind} {address}, trust {args.trust}")
    return 0


def _source_list(args: argparse.Namespace, settings: Settings) -> int:
    rows = [asdict(s) for s in _services(settings).migration.sources(_principal(None))]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']}\t{r['kind']}\t{r['address']}\ttrust {r['trust']}")
    return 0


def _take_inventory(services: Any, name: str) -> tuple[Any, Any, Any]:
    from solent.importers.migration.sources import client_for

    src = services.migration.source(_principal(None), name)
    client = client_for(src)
    delta = services.migration.record_inventory(
        _principal(src.trust), name, _counted(client.inventory(), name)
    )
    return src, delta, client


def _counted(entries: Iterator[Any], name: str, every: int = 1000) -> Iterator[Any]:
    """Pass entries on, telling stderr how far a long inventory has got."""
    n = 0
    for n, entry in enumerate(entries, 1):
        if n % every == 0:
            print(f"{name}: {n} instances listed so far", file=sys.stderr, flush=True)
        yield entry
    if n >= every:
        print(f"{name}: {n} instances listed", file=sys.stderr, flush=True)


def _inventory(args: argparse.Namespace, settings: Settings) -> int:
    from solent.importers.migration.report import write_inventory_csv

    services = _services(settings)
    src, delta, client = _take_inventory(services, args.name)
    client.close()
    rows = services.migration.inventory(_principal(src.trust), args.name)
    if args.csv:
        write_inventory_csv(rows, args.csv)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    patients = {r["patient_id"] for r in rows}
    studies = {r["study_uid"] for r in rows}
    series = {r["series_uid"] for r in rows}
    size = sum(r["size_bytes"] or 0 for r in rows)
    print(
        f"{args.name}: {len(patients)} patients, {len(studies)} studies, {len(series)} series, "
        f"{len(rows)} instances ({size / 1e6:.1f} MB known); "
        f"{delta.new} new since the last inventory, {delta.changed} with changed demographics"
        + (
            f"; {delta.conflicts} SOP Instance UIDs listed more than once (held: "
            "`solent migrate verify` says where)"
            if delta.conflicts
            else ""
        )
    )
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from solent.importers.migration.transfer import run_transfer

    services = _services(settings)
    src, delta, client = _take_inventory(services, args.name)
    principal = _principal(src.trust)
    plan = services.migration.reconcile(principal, args.name, dry_run=args.dry_run)
    summary = {"inventory": asdict(delta), "plan": plan.as_json()}
    if args.dry_run:
        client.close()
        print(json.dumps(summary, indent=2))
        return 0
    if not args.json:
        print(
            f"{args.name}: {plan.move_instances} instances of {plan.move_studies} studies to "
            f"move, {len(plan.merge_studies)} studies merge with copies already held, "
            f"{len(plan.waiting)} studies wait on identity"
            + (
                f", {plan.conflicts} instances held because the source lists their SOP "
                "Instance UID more than once (see `solent migrate verify`)"
                if plan.conflicts
                else ""
            ),
            file=sys.stderr,
        )
    workdir = settings.tmp_dir / "migrate"
    try:
        if args.json or args.no_progress or not sys.stderr.isatty():
            stats = run_transfer(
                services.migration,
                principal,
                src,
                client,
                workdir,
                newest_first=not args.oldest_first,
                json_out=sys.stdout if args.json else None,
            )
        else:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            ) as progress:
                task = progress.add_task(f"migrating {args.name}", total=None)

                def advance(done: int, total: int) -> None:
                    progress.update(task, completed=done, total=total)

                stats = run_transfer(
                    services.migration,
                    principal,
                    src,
                    client,
                    workdir,
                    newest_first=not args.oldest_first,
                    on_progress=advance,
                )
    finally:
        client.close()
    summary["transfer"] = stats.as_json()
    if args.json:
        print(json.dumps({"summary": summary}))
    else:
        t = stats.as_json()
        print(
            f"{args.name}: {stats.done} of {stats.total} instances handled {dict(stats.states)}, "
            f"{t['instances_per_s']} instances/s, {t['mb_per_s']} MB/s"
            + (f"; stopped: {stats.stopped}" if stats.stopped else ""),
            file=sys.stderr,
        )
    failed = stats.states.get("failed", 0)
    if failed:
        print(failure_advice(args.name, failed, stats.failures), file=sys.stderr)
    return 3 if stats.stopped else 1 if failed else 0


def failure_advice(source: str, failed: int, reasons: dict[str, int]) -> str:
    """What an operator does after a run that left instances failed (they stay to retry)."""
    common = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
    lines = [f"{source}: {failed} instances failed and were not moved; they are kept and tried "
             "again by the next run."]  # fmt: skip
    lines += [f"  {n} x {why}" for why, n in common]
    lines.append(
        f"Next: fix what the reasons say, then `solent migrate run {source}` again (it fetches "
        f"only what is not yet in the archive); `solent migrate verify {source}` lists each "
        f"instance with its reason; `solent migrate exclude {source} UID... --reason ...` leaves "
        "out instances the source can never deliver."
    )
    return "\n".join(lines)


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    from solent.importers.migration.report import write_csv, write_html

    services = _services(settings)
    src = services.migration.source(_principal(None), args.name)
    report = services.migration.verification(_principal(src.trust), args.name)
    if args.html:
        write_html(report, args.html)
    if args.csv:
        write_csv(report, args.csv)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(
            f"{args.name}: {report['instances']} instances at the source, "
            f"{report['counts']}; {report['unresolved']} unresolved"
        )
    return 1 if report["unresolved"] else 0


def _exclude(args: argparse.Namespace, settings: Settings) -> int:
    from solent.security.cli import cli_principal

    done = _services(settings).migration.exclude(
        cli_principal(), args.name, args.sop_uids, args.reason
    )
    print(f"{args.name}: {done} instance(s) excluded; `solent migrate include` undoes it")
    return 0


def _include(args: argparse.Namespace, settings: Settings) -> int:
    from solent.security.cli import cli_principal

    done = _services(settings).migration.include(cli_principal(), args.name, args.sop_uids)
    print(f"{args.name}: {done} instance(s) will be fetched by the next run")
    return 0
