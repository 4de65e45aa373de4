"""`solent procedures check | lookup`: the consortium's procedure map (R19) before and after it
is deployed.

``check`` parses a mapping file as the archive would (the line at fault on an error, exit 2),
so a new table is tried before ``SOLENT_PROCEDURE_MAP`` points at it; ``lookup`` answers what a
code or description a trust sends maps to under a table (the configured one by default).
Neither reads patient data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from solent.domain.procedures import ProcedureMap, parse_map
from solent.errors import InvalidInput
from solent.settings import Settings


def register(sub: Any) -> None:
    proc = sub.add_parser("procedures", help="the NICIP/SNOMED CT procedure map (R19)")
    act = proc.add_subparsers(dest="action", required=True)
    ck = act.add_parser("check", help="parse a mapping file; the rows it maps, or the bad line")
    ck.add_argument("file", type=Path)
    ck.set_defaults(handler=_check)
    lk = act.add_parser("lookup", help="what a trust's code or description maps to")
    lk.add_argument("--issuer", required=True, help="the sending trust")
    lk.add_argument("--system", default="", help="coding scheme as sent (OBR-4.3), e.g. NICIP")
    lk.add_argument("--code", default="", help="the code as sent (OBR-4.1)")
    lk.add_argument("--description", default="", help="a Study Description / OBR-4.2 text")
    lk.add_argument("--file", type=Path, help="a mapping file (default SOLENT_PROCEDURE_MAP)")
    lk.set_defaults(handler=_lookup)


def _read(path: Path) -> ProcedureMap:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from exc
    return parse_map(text, str(path))


def _check(args: argparse.Namespace, settings: Settings) -> int:
    table = _read(args.file)
    print(f"{args.file}: {len(table)} mapping(s), no errors")
    return 0


def _lookup(args: argparse.Namespace, settings: Settings) -> int:
    path = args.file or (Path(settings.procedure_map) if settings.procedure_map else None)
    if path is None:
        raise InvalidInput("no mapping file: give --file or set SOLENT_PROCEDURE_MAP")
    table = _read(path)
    found = table.lookup(args.issuer, args.system, args.code) or table.by_description(
        args.issuer, args.description
    )
    if found is None:
        print(json.dumps({"mapped": False}))
        return 1
    print(
        json.dumps(
            {
                "mapped": True,
                "nicip": found.nicip,
                "snomed": found.snomed,
                "body_region": found.body_region,
                "source": found.source,
            }
        )
    )
    return 0
