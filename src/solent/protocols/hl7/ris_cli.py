"""`solent hl7 ris add|list|remove`: the RIS of each trust, told of study edits (R57)."""

from __future__ import annotations

import argparse
import ipaddress
import re
from pathlib import Path
from typing import Any

from solent.domain.records import DestinationRow
from solent.errors import InvalidInput
from solent.security.cli import cli_principal
from solent.settings import Settings

DELIMITERS = "|^~\\&\r\n"
#: A DNS host name (RFC 1123 labels, at most 253 characters in all).
HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


def host_problem(host: str) -> str | None:
    """Why ``host`` is neither an IP address nor a host name the sender could connect to."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if HOST_NAME.fullmatch(host) is None:
        return f"--host {host[:60]!r} is no IP address or host name (no port, no spaces)"
    return None


def register(hact: Any) -> None:
    ris = hact.add_parser("ris", help="each trust's RIS, sent HL7 notifications of study edits")
    ract = ris.add_subparsers(dest="ris_action", required=True)
    add = ract.add_parser("add", help="send the trust's study edits to its RIS over MLLP")
    add.add_argument("trust", help="the trust's ODS code (its studies and records)")
    add.add_argument("--host", required=True, help="the RIS's MLLP host name or IP address")
    add.add_argument("--port", type=int, required=True)
    add.add_argument("--application", required=True, help="MSH-5 receiving application")
    add.add_argument("--facility", help="MSH-6 receiving facility (default: the trust code)")
    add.add_argument("--tls", action="store_true", help="MLLP inside TLS (R37)")
    add.add_argument(
        "--tls-ca", type=Path, help="PEM CA file the RIS certificate is checked against"
    )
    add.set_defaults(handler=_add)
    ls = ract.add_parser("list")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_list)
    rm = ract.add_parser("remove")
    rm.add_argument("trust")
    rm.set_defaults(handler=_remove)


def _add(args: argparse.Namespace, settings: Settings) -> int:
    from solent.app import build_archive

    facility = args.facility or args.trust
    for value, what in ((args.application, "--application"), (facility, "--facility")):
        if (
            not value
            or len(value) > 227
            or any(c in value for c in DELIMITERS)
            or any(ord(c) < 0x20 or c == "\x7f" for c in value)
        ):
            raise InvalidInput(
                f"{what} must be 1-227 characters without HL7 delimiters or control characters"
            )
    if (why := host_problem(args.host)) is not None:
        raise InvalidInput(why)
    if not 0 < args.port < 65536:
        raise InvalidInput("--port must be 1-65535")
    if args.tls_ca is not None and not args.tls:
        raise InvalidInput("--tls-ca needs --tls")
    if args.tls_ca is not None and len(str(args.tls_ca.resolve())) > 1000:
        raise InvalidInput("--tls-ca: the path is over 1000 characters")
    if args.tls_ca is not None and not args.tls_ca.is_file():
        raise InvalidInput(f"--tls-ca: no such file {args.tls_ca}")
    row = DestinationRow(
        args.trust,
        args.host,
        args.port,
        args.application,
        facility,
        args.tls,
        str(args.tls_ca.resolve()) if args.tls_ca is not None else None,
    )
    archive = build_archive(settings)
    try:
        archive.services.directory.add_destination(cli_principal(), row)
    finally:
        archive.close()
    print(
        f"study edits of trust {row.trust_code} go to {row.application}^{row.facility} at "
        f"{row.host}:{row.port}"
        + (" over TLS" if row.tls else "")
        + " (with `ris` in SOLENT_JOBS_CONSUMERS)"
    )
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from solent.app import build_archive
    from solent.cli import _print_table

    archive = build_archive(settings)
    try:
        rows = [
            {
                "trust": r.trust_code,
                "host": r.host,
                "port": r.port,
                "application": r.application,
                "facility": r.facility,
                "tls": "yes" if r.tls else "no",
                "tls_ca": r.tls_ca or "",
            }
            for r in archive.services.directory.destinations()
        ]
    finally:
        archive.close()
    _print_table(rows, args.json)
    return 0


def _remove(args: argparse.Namespace, settings: Settings) -> int:
    from solent.app import build_archive

    archive = build_archive(settings)
    try:
        archive.services.directory.remove_destination(cli_principal(), args.trust)
    finally:
        archive.close()
    print(f"trust {args.trust} has no HL7 destination now")
    return 0
