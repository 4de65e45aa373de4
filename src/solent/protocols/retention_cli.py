"""`solent retention ...` (R42): each study's retention date and why, the expired studies, and
pathway flags, run by the operator on the server (audited as ``cli:<os user>``).

Proposing a deletion has a person's name on it, so it is the JSON API's, by a records manager
(``POST /api/retention-deletions``); a second one approves it there.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from solent.settings import Settings


def register(sub: Any) -> None:
    r = sub.add_parser("retention", help="retention dates (R42): why, expired studies, flags")
    actions = r.add_subparsers(dest="action", required=True)
    ex = actions.add_parser("explain", help="a study's retention date, its rule and inputs")
    ex.add_argument("study_uid")
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(handler=_explain)
    ls = actions.add_parser(
        "expired", help="studies whose retention ran out (no legal hold, not proposed yet)"
    )
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--after", type=int, default=0, help="continue from a listing's next_after")
    ls.set_defaults(handler=_expired)
    flag = actions.add_parser("flag", help="pathway flags").add_subparsers(
        dest="flag_action", required=True
    )
    fa = flag.add_parser("add", help="flag a study or a patient record as on a pathway")
    fa.add_argument(
        "--kind",
        required=True,
        choices=("cancer", "transplant", "cjd", "maternity", "screening", "clinical_trial"),
    )
    fa.add_argument("--study", help="Study Instance UID")
    fa.add_argument("--issuer", help="trust of the patient record (with --patient-id)")
    fa.add_argument("--patient-id")
    fa.add_argument("--since", help="YYYY-MM-DD the period counts from (diagnosis...)")
    fa.add_argument("--note", required=True, help="why (e.g. MDT reference)")
    fa.set_defaults(handler=_flag_add)
    fl = flag.add_parser("list", help="pathway flags")
    fl.add_argument("--all", action="store_true", help="removed ones too")
    fl.set_defaults(handler=_flag_list)
    fr = flag.add_parser("remove", help="remove a pathway flag (kept as a record)")
    fr.add_argument("flag_id", type=int)
    fr.add_argument("--reason", required=True)
    fr.set_defaults(handler=_flag_remove)


def _schedule(settings: Settings) -> Any:
    from solent.app import build_archive

    return build_archive(settings).services.retention_schedule


def _operator() -> Any:
    from solent.security.cli import cli_principal

    return cli_principal()


def _print(value: Any) -> None:
    print(json.dumps(value, indent=1, default=str))


def _explain(args: argparse.Namespace, settings: Settings) -> int:
    view = _schedule(settings).explain(_operator(), args.study_uid)
    if args.json:
        _print(view)
        return 0
    state = "EXPIRED" if view["expired"] else "kept"
    print(f"study {view['study_uid']}: {state} until {view['retain_until']}")
    print(f"  rule: {view['rule']}: {view['basis']}")
    for rule in view["rules"]:
        print(f"  - {rule['rule']:<16} {rule['until']}  {rule['basis']}")
    inputs = view["inputs"]
    print(f"  last contact {inputs['last_contact']} ({inputs['last_contact_source']})")
    for hold in view["legal_holds"]:
        print(f"  legal hold {hold['id']} ({hold['reference']}): not deletable")
    return 0


def _expired(args: argparse.Namespace, settings: Settings) -> int:
    _print(_schedule(settings).expired(_operator(), limit=args.limit, after=args.after))
    return 0


def _flag_add(args: argparse.Namespace, settings: Settings) -> int:
    target = {"study_uid": args.study, "issuer": args.issuer, "patient_id": args.patient_id}
    _print(
        _schedule(settings).set_flag(
            _operator(),
            kind=args.kind,
            target={k: v for k, v in target.items() if v},
            note=args.note,
            since=args.since,
        )
    )
    return 0


def _flag_list(args: argparse.Namespace, settings: Settings) -> int:
    _print(_schedule(settings).flags(_operator(), active_only=not args.all))
    return 0


def _flag_remove(args: argparse.Namespace, settings: Settings) -> int:
    _print(_schedule(settings).remove_flag(_operator(), args.flag_id, args.reason))
    return 0
