"""Command line: `solent serve | import | check | trust | ae | demo | stats | db`.

Every command reads the same settings as `serve` (SOLENT_* variables, --config FILE).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from solent import __version__
from solent.errors import (
    AlreadyExists,
    ConfigurationError,
    InvalidInput,
    NotFound,
    SolentError,
)
from solent.settings import Settings, load_settings

OPERATIONS = ("store", "query", "retrieve", "notify")

# Feature modules add their own subcommands: each has `register(subparsers)`, and sets
# `handler=fn(args, settings) -> int` on its parsers via set_defaults.
COMMAND_MODULES = (
    "solent.protocols.dimse.cli",
    "solent.protocols.hl7.cli",
    "solent.security.cli",
    "solent.importers.migration.cli",
    "solent.jobs.cli",  # issue 16
    "solent.protocols.retention_cli",  # R42
    "solent.procedures_cli",  # R19
    "solent.safety.cli",  # R45/R46
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="solent", description="Solent PACS: a regional DICOM archive.")
    p.add_argument("--version", action="version", version=f"solent {__version__}")
    p.add_argument("--config", type=Path, help="TOML settings file (SOLENT_* variables win)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="start the PACS (HTTP, DICOM, HL7 listeners)")
    s.add_argument(
        "--demo", action="store_true", help="load the synthetic demo data if the archive is empty"
    )

    i = sub.add_parser("import", help="import DICOM files and folders")
    i.add_argument("paths", nargs="+", type=Path)
    i.add_argument("--trust", required=True, help="code of the trust the files belong to")
    i.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    i.add_argument(
        "--jsonl", action="store_true", help="print one JSON line per file as it is stored"
    )
    i.add_argument("--workers", type=int, help="parallel workers (default SOLENT_IMPORT_WORKERS)")
    i.add_argument("--no-progress", action="store_true", help="no progress bar")
    i.add_argument(
        "--outside",
        action="store_true",
        help="studies from outside the consortium (a PDI CD/DVD, another organisation): held, "
        "seen by nobody, until an identity steward reconciles each to a patient (R28)",
    )

    c = sub.add_parser("check", help="compare the index with the blob store")
    c.add_argument(
        "--repair", action="store_true", help="remove orphan blobs and rows without blobs"
    )
    c.add_argument(
        "--grace", type=float, default=0.0, help="ignore orphan blobs younger than this (s)"
    )
    c.add_argument("--json", action="store_true")

    t = sub.add_parser("trust", help="manage trusts").add_subparsers(dest="action", required=True)
    ta = t.add_parser("add", help="register a trust by its ODS code")
    ta.add_argument("code", help="the trust's ODS code, e.g. RHM (1-16 letters, digits, - or _)")
    ta.add_argument("--name", required=True, help="the trust's name")
    tl = t.add_parser("list", help="registered trusts")
    tl.add_argument("--json", action="store_true")

    a = sub.add_parser("ae", help="manage remote DICOM nodes").add_subparsers(
        dest="action", required=True
    )
    aa = a.add_parser(
        "add", help="register a node that may associate (remove it first to change it)"
    )
    aa.add_argument("ae_title", help="the node's calling AE title")
    aa.add_argument(
        "--host", required=True, help="host name or address it calls from ('*': any address)"
    )
    aa.add_argument(
        "--port", type=int, required=True, help="its DICOM port (C-MOVE destination, solent echo)"
    )
    aa.add_argument("--trust", required=True, help="trust whose images it stores and queries")
    aa.add_argument(
        "--allow",
        default="store,query,retrieve",
        help="comma list of store,query,retrieve,notify (notify: send it IHE Instance "
        "Availability Notifications of the studies it may see)",
    )
    aa.add_argument(
        "--tls-identity",
        help="TLS client certificate the node must present on the DICOM TLS port: its subject "
        "CN or SHA-256 fingerprint (needs SOLENT_DICOM_TLS_CA)",
    )
    aa.add_argument(
        "--outside",
        action="store_true",
        help="an outside source (IEP gateway, another organisation's PACS): what it stores is "
        "held until an identity steward reconciles it to a patient (R28)",
    )
    al = a.add_parser("list", help="registered nodes")
    al.add_argument("--json", action="store_true")
    ar = a.add_parser("remove", help="unregister a node")
    ar.add_argument("ae_title")

    sub.add_parser("demo", help="load the synthetic demo data")
    st = sub.add_parser("stats", help="counts of trusts, patients, studies, series, instances")
    st.add_argument("--json", action="store_true")
    db = sub.add_parser("db", help="database schema").add_subparsers(dest="action", required=True)
    db.add_parser("upgrade", help="apply migrations (serve does this at start-up)")
    import importlib

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # feature not present in this build
            raise
        module.register(sub)
    _accept_config_after_command(p)
    return p


def _accept_config_after_command(parser: argparse.ArgumentParser) -> None:
    """Let `--config FILE` also follow the command (`solent serve --config FILE`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if "--config" not in child._option_string_actions:
                    child.add_argument(
                        "--config",
                        type=Path,
                        default=argparse.SUPPRESS,
                        help="TOML settings file (SOLENT_* variables win)",
                    )
                _accept_config_after_command(child)


def _archive(settings: Settings) -> Any:
    from solent.app import build_archive

    return build_archive(settings)


def _print_table(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        print("(none)")
        return
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        from solent import logs

        logs.configure(settings.log_format, settings.log_level, settings.log_patient_data)
        return _dispatch(args, settings)
    except ConfigurationError as exc:
        print(f"solent: configuration error: {exc}", file=sys.stderr)
        return 2
    except InvalidInput as exc:  # a bad command-line value: usage error, like argparse's
        print(f"solent: {exc}", file=sys.stderr)
        return 2
    except (AlreadyExists, NotFound) as exc:
        print(f"solent: {exc}", file=sys.stderr)
        return 1
    except SolentError as exc:
        print(f"solent: {exc}", file=sys.stderr)
        return 1
    except ConnectionError as exc:  # a peer (legacy PACS, DICOM node) refused or went away
        print(f"solent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `solent ... | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from solent.security.cli import cli_principal  # the operator, as every command acts

    handler = getattr(args, "handler", None)
    if handler is not None:
        return int(handler(args, settings))
    cmd = args.command
    if cmd == "serve":
        from solent.serve import serve

        archive = _archive(settings)
        if args.demo or settings.demo_data:
            from solent.demo import demo_state, load_demo

            empty = archive.services.access.stats(cli_principal())["instances"] == 0
            state = demo_state(archive)
            if empty or state == "partial":  # partial: a first start stopped while loading
                print(
                    "Loading demo data (first start)..."
                    if empty
                    else "Completing the demo data (an earlier load was interrupted)...",
                    flush=True,
                )
                n = load_demo(archive)
                print(f"Demo data loaded: {n} instances at trusts ZZA, ZZB, ZZC, ZZD.", flush=True)
        from solent.security.cli import login_hint

        print(login_hint(archive), flush=True)
        serve(archive)
        return 0
    if cmd == "import":
        return _import(args, settings)
    if cmd == "check":
        archive = _archive(settings)
        report = archive.services.check.run(
            cli_principal(), repair=args.repair, grace_seconds=args.grace
        )
        if args.json:
            print(json.dumps(report.as_json(), indent=2))
        else:
            print(
                f"{report.instances} instances, {report.blobs} blobs: "
                f"{len(report.missing_blobs)} rows without blob, "
                f"{len(report.size_mismatches)} size mismatches, "
                f"{len(report.orphan_blobs)} orphan blobs"
                + (
                    f" ({report.young_orphans} younger than --grace ignored)"
                    if report.young_orphans
                    else ""
                )
            )
            if any(report.visibility_drift.values()):
                drift = report.visibility_drift
                print(
                    f"access rule kept out of date: {drift['missing']} record/trust pairs hidden, "
                    f"{drift['extra']} shown that the rule does not give"
                )
            if report.repaired:
                print("repaired: " + ", ".join(f"{k} {v}" for k, v in report.repaired.items()))
            print(
                "archive is clean"
                if report.clean
                else "archive needs repair: run `solent check --repair`"
            )
        return 0 if report.clean or args.repair else 1
    if cmd == "trust":
        archive = _archive(settings)
        if args.action == "add":
            row = archive.services.directory.add_trust(cli_principal(), _code(args.code), args.name)
            print(f"trust {row.code} added")
            return 0
        _print_table(
            [{"code": r.code, "name": r.name} for r in archive.services.directory.trusts()],
            args.json,
        )
        return 0
    if cmd == "ae":
        archive = _archive(settings)
        if args.action == "add":
            allow = [a.strip() for a in args.allow.split(",") if a.strip()]
            bad = [a for a in allow if a not in OPERATIONS]
            if bad or not allow:
                raise InvalidInput(f"--allow takes a comma list of {', '.join(OPERATIONS)}")
            if not 0 < args.port < 65536:
                raise InvalidInput("--port must be 1-65535")
            aet = args.ae_title
            if not aet or len(aet) > 16 or "\\" in aet or not aet.isprintable():
                raise InvalidInput("AE title must be 1-16 printable characters without backslash")
            node = archive.services.directory.add_node(
                cli_principal(),
                aet,
                args.host,
                args.port,
                args.trust,
                allow,
                tls_identity=args.tls_identity,
                outside=args.outside,
            )
            print(
                f"DICOM node {node.ae_title} ({node.host}:{node.port}, trust {node.trust_code}) "
                f"may {', '.join(node.allowed)}"
                + ("; an outside source: what it stores is held until reconciled" * node.outside)
            )
            consumers = {c.strip() for c in settings.jobs_consumers.split(",")}
            if node.allow_notify and "ian" not in consumers:
                print(
                    "note: Instance Availability Notifications go out only with the 'ian' "
                    "consumer: add it to SOLENT_JOBS_CONSUMERS and restart `solent serve`",
                    file=sys.stderr,
                )
            return 0
        if args.action == "remove":
            archive.services.directory.remove_node(cli_principal(), args.ae_title)
            print(f"DICOM node {args.ae_title} removed")
            return 0
        rows = [
            {
                "ae_title": n.ae_title,
                "host": n.host,
                "port": n.port,
                "trust": n.trust_code,
                "allow": ",".join(n.allowed),
                "tls_identity": n.tls_identity or "",
                "outside": n.outside,
            }
            for n in archive.services.directory.nodes()
        ]
        _print_table(rows, args.json)
        return 0
    if cmd == "demo":
        from solent.demo import demo_state, load_demo

        archive = _archive(settings)
        if demo_state(archive) == "complete":
            print("demo data already loaded; nothing to do", file=sys.stderr)
            return 0
        n = load_demo(archive)
        print(f"demo data loaded: {n} instances")
        return 0
    if cmd == "stats":
        stats = _archive(settings).services.access.stats(cli_principal())
        print(json.dumps(stats) if args.json else "\n".join(f"{k}: {v}" for k, v in stats.items()))
        return 0
    if cmd == "db":
        _archive(settings)
        print("database schema is up to date")
        return 0
    raise AssertionError(cmd)


def _code(code: str) -> str:
    if not code or len(code) > 16 or not all(c.isalnum() or c in "-_" for c in code):
        raise InvalidInput("a trust code is 1-16 letters, digits, '-' or '_' (e.g. RHM, ZZA)")
    return code


def _import(args: argparse.Namespace, settings: Settings) -> int:
    from solent.domain.principal import OUTSIDE_SOURCE, Principal, PrincipalKind
    from solent.importers.folder import count_files, print_summary, run_import

    archive = _archive(settings)
    if archive.services.directory.trust(args.trust) is None:
        raise NotFound(
            f"trust {args.trust} does not exist; "
            f"add it with `solent trust add {args.trust} --name ...`"
        )
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        raise NotFound(f"no such file or folder: {', '.join(missing)}")
    roles = frozenset({OUTSIDE_SOURCE}) if args.outside else frozenset()
    principal = Principal(PrincipalKind.IMPORTER, "solent-import", args.trust, roles=roles)
    workers = args.workers or settings.import_workers
    show_progress = (
        not args.no_progress and not args.json and not args.jsonl and sys.stderr.isatty()
    )
    stream = sys.stdout if args.jsonl else None
    if show_progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        total = count_files(args.paths)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        ) as progress:
            task = progress.add_task("importing", total=total)
            summary = run_import(
                archive.services.ingest,
                args.paths,
                principal,
                workers=workers,
                on_result=lambda _p, _r: progress.advance(task),
                stream=stream,
            )
    else:
        summary = run_import(
            archive.services.ingest, args.paths, principal, workers=workers, stream=stream
        )
    if args.json:
        print(json.dumps(summary.as_json(), indent=2))
    else:
        print_summary(summary)
    return 1 if summary.rejected else 0


if __name__ == "__main__":
    sys.exit(main())
