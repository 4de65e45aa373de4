"""`solent safety hazards | configuration | limitations`: what a trust's Clinical Safety Officer
needs for its DCB0160 safety case (R46), from this installed release and this node's settings.

``hazards`` exports the hazard log (text, ``--json`` or ``--csv``, one row per hazard);
``configuration`` lists the configuration risks of the settings this node runs with (the same
SOLENT_* variables and --config file as ``serve``), flagged ones first; ``--strict`` exits 1
when any is flagged, for a deployment pipeline. ``limitations`` lists the known limitations.
None of them reads patient data.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict
from typing import Any

from solent import __version__
from solent.safety.configuration import findings
from solent.safety.hazards import RISK_MEANING, Hazard, hazard_log, limitations
from solent.settings import Settings

CSV_COLUMNS = (
    "release",
    "hazard_id",
    "title",
    "r45_topic",
    "causes",
    "effect",
    "harm",
    "initial_severity",
    "initial_likelihood",
    "initial_risk",
    "controls",
    "evidence",
    "residual_severity",
    "residual_likelihood",
    "residual_risk",
    "settings",
)


def register(sub: Any) -> None:
    safety = sub.add_parser(
        "safety", help="clinical safety: hazard log, configuration risks, limitations (R45/R46)"
    )
    act = safety.add_subparsers(dest="action", required=True)
    hz = act.add_parser("hazards", help="export the hazard log for a DCB0160 safety case")
    fmt = hz.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true", help="one row per hazard")
    hz.set_defaults(handler=_hazards)
    cf = act.add_parser("configuration", help="configuration risks of this node's settings")
    cf.add_argument("--json", action="store_true")
    cf.add_argument("--strict", action="store_true", help="exit 1 when a risk is flagged")
    cf.set_defaults(handler=_configuration)
    lm = act.add_parser("limitations", help="known limitations of this release")
    lm.add_argument("--json", action="store_true")
    lm.set_defaults(handler=_limitations)


def _hazard_json(h: Hazard) -> dict[str, Any]:
    return {
        "id": h.id,
        "title": h.title,
        "r45_topic": h.r45 or None,
        "causes": list(h.causes),
        "effect": h.effect,
        "harm": h.harm,
        "initial": {**asdict(h.initial), "risk": h.initial.risk},
        "controls": [
            {"id": c.id, "kind": c.kind, "description": c.description, "evidence": list(c.evidence)}
            for c in h.controls
        ],
        "residual": {**asdict(h.residual), "risk": h.residual.risk},
        "settings": list(h.settings),
    }


def _csv_row(h: Hazard) -> list[str]:
    return [
        __version__,
        h.id,
        h.title,
        h.r45,
        "\n".join(h.causes),
        h.effect,
        h.harm,
        h.initial.severity,
        h.initial.likelihood,
        str(h.initial.risk),
        "\n".join(f"{c.id} ({c.kind}): {c.description}" for c in h.controls),
        "\n".join(e for c in h.controls for e in c.evidence),
        h.residual.severity,
        h.residual.likelihood,
        str(h.residual.risk),
        " ".join(h.settings),
    ]


def _hazards(args: argparse.Namespace, settings: Settings) -> int:
    log = hazard_log()
    if args.json:
        body = {
            "release": __version__,
            "risk_ratings": {str(k): v for k, v in RISK_MEANING.items()},
            "hazards": [_hazard_json(h) for h in log],
        }
        print(json.dumps(body, indent=2, ensure_ascii=False))
        return 0
    if args.csv:
        out = csv.writer(sys.stdout, lineterminator="\r\n")
        out.writerow(CSV_COLUMNS)
        out.writerows(_csv_row(h) for h in log)
        return 0
    print(f"Solent PACS {__version__} hazard log: {len(log)} hazards (DCB0129 risk 1-5)")
    for h in log:
        print(
            f"\n{h.id}  {h.title}\n  risk {h.initial.risk} ({h.initial.severity}, "
            f"{h.initial.likelihood}) -> residual {h.residual.risk} ({h.residual.severity}, "
            f"{h.residual.likelihood})"
        )
        for c in h.controls:
            tests = f"; {len(c.evidence)} test(s)" if c.evidence else ""
            print(f"  {c.id} [{c.kind}{tests}] {c.description}")
    return 0


def _configuration(args: argparse.Namespace, settings: Settings) -> int:
    found = findings(settings)
    flagged = [f for f in found if f.flagged]
    if args.json:
        print(json.dumps([asdict(f) for f in found], indent=2, ensure_ascii=False))
    else:
        print(
            f"Solent PACS {__version__}: {len(flagged)} configuration risk(s) flagged "
            f"of {len(found)} checked"
        )
        for f in found:
            status = "RISK" if f.flagged else ("info" if f.severity == "info" else "ok")
            print(
                f"\n{status:4}  {f.severity:6}  {f.setting} = {f.value}  [{', '.join(f.hazards)}]"
            )
            print(f"      {f.concern}")
            if f.flagged or f.severity == "info":
                print(f"      What to do: {f.advice}")
    return 1 if args.strict and flagged else 0


def _limitations(args: argparse.Namespace, settings: Settings) -> int:
    items = limitations()
    if args.json:
        print(json.dumps([asdict(x) for x in items], indent=2, ensure_ascii=False))
        return 0
    print(f"Solent PACS {__version__}: {len(items)} known limitation(s)")
    for x in items:
        hazards = f" [{', '.join(x.hazards)}]" if x.hazards else ""
        print(f"\n{x.id}  {x.title}{hazards}\n  {x.detail}\n  See {x.docs}")
    return 0
