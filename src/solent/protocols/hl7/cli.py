"""`solent identity links|history|link|unlink|queue|reverse`, the R57 study edits
(`solent identity move-study|correct-accession|study-edits|approve-edit|refuse-edit|
reverse-edit`) and `solent hl7 send|messages`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from solent.domain.principal import Principal, PrincipalKind
from solent.errors import NotFound, SolentError
from solent.protocols.hl7 import ris_cli
from solent.security.cli import cli_principal
from solent.settings import Settings


def register(sub: Any) -> None:
    ident = sub.add_parser("identity", help="cross-trust patient index: links, history, queue")
    act = ident.add_subparsers(dest="action", required=True)
    for name, text in (
        ("links", "records linked to a patient record (and why)"),
        ("history", "identity changes of a patient record: who, message, when, before/after"),
    ):
        p = act.add_parser(name, help=text)
        p.add_argument("issuer", help="trust ODS code that issued the ID")
        p.add_argument("patient_id")
        p.add_argument("--json", action="store_true")
        p.set_defaults(handler=_links if name == "links" else _history)
    for name in ("link", "unlink"):
        p = act.add_parser(name, help=f"{name} two records (as HL7 A24/A37 would)")
        p.add_argument("issuer_a")
        p.add_argument("patient_id_a")
        p.add_argument("issuer_b")
        p.add_argument("patient_id_b")
        p.add_argument("--by", default="admin", help="who is making the change (audit)")
        p.set_defaults(handler=_set_link, linked=name == "link")
    q = act.add_parser("queue", help="the data-quality work queue")
    q.add_argument("--all", action="store_true", help="include resolved items")
    q.add_argument("--json", action="store_true")
    q.set_defaults(handler=_queue)
    r = act.add_parser("reverse", help="undo a link, unlink, identifier change or update")
    r.add_argument("event", type=int, help="identity event number (from `history`)")
    r.add_argument("--by", default="admin")
    r.set_defaults(handler=_reverse)

    _register_study_edits(act)
    _register_imports(act)

    hl7 = sub.add_parser("hl7", help="HL7 v2: send a message file, list the journal, peers")
    hact = hl7.add_subparsers(dest="action", required=True)
    s = hact.add_parser("send", help="send ER7 message file(s) over MLLP and print the ACKs")
    s.add_argument("paths", nargs="+", type=Path)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, help="default: SOLENT_HL7_PORT")
    s.set_defaults(handler=_send)
    m = hact.add_parser("messages", help="the HL7 journal, newest first")
    m.add_argument("--status", choices=("received", "applied", "rejected", "held"))
    m.add_argument("--limit", type=int, default=50)
    m.add_argument("--json", action="store_true")
    m.set_defaults(handler=_messages)
    _register_senders(hact)
    ris_cli.register(hact)


def _register_study_edits(act: Any) -> None:
    """R57: the operator's way to the study edit service (a regional administrator named by
    --by, as `reverse`); a move between two trusts' records still needs a second --by."""
    mv = act.add_parser("move-study", help="move a study to another patient record")
    mv.add_argument("study_uid")
    mv.add_argument("issuer", help="trust ODS code that issued the target record's ID")
    mv.add_argument("patient_id")
    mv.add_argument("--reason", required=True)
    mv.add_argument("--by", default="admin", help="who is making the change (audit)")
    mv.set_defaults(handler=_move_study)
    ac = act.add_parser("correct-accession", help="correct a study's accession number")
    ac.add_argument("study_uid")
    ac.add_argument("accession_number")
    ac.add_argument("--issuer", help="the accession's issuer (default: the study's trust)")
    ac.add_argument("--reason", required=True)
    ac.add_argument("--by", default="admin")
    ac.set_defaults(handler=_correct_accession)
    sp = act.add_parser("split-study", help="move series of a study into a new study")
    sp.add_argument("study_uid")
    sp.add_argument("series_uid", nargs="+", help="the series to move into the new study")
    sp.add_argument("--accession", help="the new study's accession number (default: none)")
    sp.add_argument("--issuer", help="the accession's issuer (default: the study's trust)")
    sp.add_argument("--reason", required=True)
    sp.add_argument("--by", default="admin")
    sp.set_defaults(handler=_split_study)
    mg = act.add_parser("merge-study", help="move every series of a study into another")
    mg.add_argument("study_uid", help="the study that goes (leaves every query)")
    mg.add_argument("into_study_uid", help="the study that stays and holds them all")
    mg.add_argument("--reason", required=True)
    mg.add_argument("--by", default="admin")
    mg.set_defaults(handler=_merge_study)
    ls = act.add_parser("study-edits", help="study edits (default: moves awaiting approval)")
    ls.add_argument("--study", help="every edit of this Study Instance UID")
    ls.add_argument("--status", choices=("requested", "done", "refused"))
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--by", default="admin")
    ls.set_defaults(handler=_study_edits)
    for name, text in (
        ("approve-edit", "approve a requested move (a second, different person)"),
        ("refuse-edit", "refuse a requested move"),
        ("reverse-edit", "undo a done edit (move the study back, restore the accession)"),
    ):
        p = act.add_parser(name, help=text)
        p.add_argument("edit", type=int, help="study edit number (from `study-edits`)")
        if name != "approve-edit":
            p.add_argument("--reason", required=True)
        p.add_argument("--by", default="admin")
        p.set_defaults(handler=_decide_edit, decision=name.removesuffix("-edit"))


def _register_imports(act: Any) -> None:
    """R28: outside studies held until reconciled (the same door as the JSON API; --by names
    the acting regional administrator)."""
    ls = act.add_parser("imports", help="outside studies waiting to be reconciled (R28)")
    ls.add_argument("--status", choices=("held", "released", "discarded"), default="held")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--by", default="admin")
    ls.set_defaults(handler=_imports)
    rc = act.add_parser(
        "reconcile-import", help="file an outside study under a patient record (R28)"
    )
    rc.add_argument("study_uid")
    rc.add_argument("issuer", help="trust ODS code that issued the record's ID")
    rc.add_argument("patient_id")
    rc.add_argument("--reason", default="")
    rc.add_argument("--by", default="admin")
    rc.set_defaults(handler=_decide_import, decision="reconcile")
    rj = act.add_parser("reject-import", help="reject an outside study (its copies removed)")
    rj.add_argument("study_uid")
    rj.add_argument("--reason", required=True)
    rj.add_argument("--by", default="admin")
    rj.set_defaults(handler=_decide_import, decision="reject")


def _imports(args: argparse.Namespace, settings: Settings) -> int:
    from solent.app import build_archive

    archive = build_archive(settings)
    try:
        rows = archive.services.imports.work_list(_admin(args.by), status=args.status)
        flat = [
            {
                "study_uid": r["study_uid"],
                "received_at": r["received_at"],
                "sender": r["sender"],
                "trust": r["receiving_trust"],
                "patient_as_sent": "/".join(
                    x for x in (r["as_sent"]["patient_id"], r["as_sent"]["issuer"]) if x
                ),
                "name": r["as_sent"]["name"] or "",
                "birth_date": r["as_sent"]["birth_date"] or "",
                "date": r["study"]["date"] or "",
                "modalities": "/".join(r["study"]["modalities"]),
                "instances": r["instances"],
                "resolution": r["resolution"] or "",
            }
            for r in rows
        ]
        _print(rows if args.json else flat, args.json)
    finally:
        archive.close()
    return 0


def _decide_import(args: argparse.Namespace, settings: Settings) -> int:
    from solent.app import build_archive
    from solent.services.identity import PatientKey

    archive = build_archive(settings)
    try:
        imports = archive.services.imports
        who = _admin(args.by)
        if args.decision == "reconcile":
            to = PatientKey(args.issuer, args.patient_id)
            done = imports.reconcile(who, args.study_uid, to, args.reason)
            print(
                f"outside study {args.study_uid} reconciled to {to}: {done['instances']} "
                f"instance(s) filed, {done['already_stored']} already in the archive"
            )
        else:
            done = imports.reject(who, args.study_uid, args.reason)
            print(f"outside study {args.study_uid} rejected: {done['instances']} instance(s)")
    finally:
        archive.close()
    return 0


def _edit_service(settings: Settings) -> Any:
    from solent.app import build_archive

    archive = build_archive(settings)
    return archive, archive.services.study_edits


def _print_edit(edit: dict[str, Any]) -> None:
    where = ""
    if edit.get("to_study_uid") and not edit.get("to"):
        where = f" into study {edit['to_study_uid']}"
    elif edit.get("to"):
        where = f" to {edit['to']['patient_id']}/{edit['to']['issuer']}"
    elif edit.get("accession"):
        where = f" accession {edit['accession']['after']['accession_number']}"
    print(f"study edit {edit['id']} ({edit['kind']}{where}): {edit['status']}")


def _move_study(args: argparse.Namespace, settings: Settings) -> int:
    from solent.services.identity import PatientKey

    archive, edits = _edit_service(settings)
    try:
        to = PatientKey(args.issuer, args.patient_id)
        _print_edit(edits.move(_admin(args.by), args.study_uid, to, args.reason))
    finally:
        archive.close()
    return 0


def _split_study(args: argparse.Namespace, settings: Settings) -> int:
    archive, edits = _edit_service(settings)
    try:
        edit = edits.split(
            _admin(args.by),
            args.study_uid,
            args.series_uid,
            args.reason,
            accession=args.accession,
            accession_issuer=args.issuer,
        )
        _print_edit(edit)
    finally:
        archive.close()
    return 0


def _merge_study(args: argparse.Namespace, settings: Settings) -> int:
    archive, edits = _edit_service(settings)
    try:
        _print_edit(edits.merge(_admin(args.by), args.study_uid, args.into_study_uid, args.reason))
    finally:
        archive.close()
    return 0


def _correct_accession(args: argparse.Namespace, settings: Settings) -> int:
    archive, edits = _edit_service(settings)
    try:
        _print_edit(
            edits.correct_accession(
                _admin(args.by), args.study_uid, args.accession_number, args.issuer, args.reason
            )
        )
    finally:
        archive.close()
    return 0


def _study_edits(args: argparse.Namespace, settings: Settings) -> int:
    archive, edits = _edit_service(settings)
    try:
        status = args.status if args.status or args.study else "requested"
        rows = edits.list(_admin(args.by), study_uid=args.study, status=status)
        flat = [
            {
                "edit": r["id"],
                "kind": r["kind"],
                "status": r["status"],
                "study_uid": r["study_uid"],
                "from": f"{r['from']['patient_id']}/{r['from']['issuer']}" if r["from"] else "",
                "to": f"{r['to']['patient_id']}/{r['to']['issuer']}" if r.get("to") else "",
                "requested_by": r["requested_by"],
                "decided_by": r["decided_by"] or "",
                "reason": r["reason"],
            }
            for r in rows
        ]
        _print(rows if args.json else flat, args.json)
    finally:
        archive.close()
    return 0


def _decide_edit(args: argparse.Namespace, settings: Settings) -> int:
    archive, edits = _edit_service(settings)
    try:
        who = _admin(args.by)
        if args.decision == "approve":
            edit = edits.approve(who, args.edit)
        elif args.decision == "refuse":
            edit = edits.refuse(who, args.edit, args.reason)
        else:
            edit = edits.reverse(who, args.edit, args.reason)
        _print_edit(edit)
    finally:
        archive.close()
    return 0


def _register_senders(hact: Any) -> None:
    """`solent hl7 sender add|list|remove`: who may send over MLLP (issue 6)."""
    sa = hact.add_parser("sender", help="registered HL7 senders (MSH-3/MSH-4 + address)")
    sact = sa.add_subparsers(dest="sender_action", required=True)
    add = sact.add_parser("add", help="let MSH-3^MSH-4 send from the given address(es)")
    add.add_argument("application", help='MSH-3 sending application, or "*" for any')
    add.add_argument("facility", help="MSH-4 sending facility (the trust's ODS code)")
    add.add_argument(
        "--host",
        action="append",
        required=True,
        help='host name or IP it sends from (repeat or comma list; "*": any address)',
    )
    add.add_argument("--trust", help="trust it speaks for (default: the facility if a trust)")
    add.add_argument(
        "--regional",
        action="store_true",
        help="a regional identity source (EMPI): speaks for no one trust and may link/unlink "
        "records of every trust (ADT A24/A37)",
    )
    add.set_defaults(handler=_sender_add)
    ls = sact.add_parser("list")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_sender_list)
    rm = sact.add_parser("remove")
    rm.add_argument("application")
    rm.add_argument("facility")
    rm.set_defaults(handler=_sender_remove)


def _sender_add(args: argparse.Namespace, settings: Settings) -> int:
    from solent.app import build_archive
    from solent.errors import InvalidInput

    hosts = [h.strip() for raw in args.host for h in raw.split(",") if h.strip()]
    for value, what in ((args.application, "application"), (args.facility, "facility")):
        if not value or len(value) > 227 or any(c in value for c in "|^~\\&\r\n"):
            raise InvalidInput(f"{what} must be 1-227 characters without HL7 delimiters")
    if not hosts:
        raise InvalidInput("--host names at least one host name or IP address")
    if args.regional and args.trust:
        raise InvalidInput("a sender is either --regional or speaks for one --trust, not both")
    archive = build_archive(settings)
    try:
        directory = archive.services.directory
        trust = args.trust
        if trust is None and not args.regional:
            if directory.trust(args.facility) is None:
                raise InvalidInput(
                    f"{args.facility} is not a trust: name the trust this feed speaks for "
                    "with --trust CODE, or register a regional identity source with --regional"
                )
            trust = args.facility
        row = directory.add_sender(cli_principal(), args.application, args.facility, hosts, trust)
    finally:
        archive.close()
    print(
        f"HL7 sender {row.application}^{row.facility} may send from {', '.join(row.hosts)}"
        + (f" for trust {row.trust_code}" if row.trust_code else " as a regional identity source")
    )
    return 0


def _sender_list(args: argparse.Namespace, settings: Settings) -> int:
    from solent.app import build_archive

    archive = build_archive(settings)
    try:
        rows = [
            {
                "application": r.application,
                "facility": r.facility,
                "hosts": ",".join(r.hosts),
                "trust": r.trust_code or "",
            }
            for r in archive.services.directory.senders()
        ]
    finally:
        archive.close()
    _print(rows, args.json)
    return 0


def _sender_remove(args: argparse.Namespace, settings: Settings) -> int:
    from solent.app import build_archive

    archive = build_archive(settings)
    try:
        archive.services.directory.remove_sender(cli_principal(), args.application, args.facility)
    finally:
        archive.close()
    print(f"HL7 sender {args.application}^{args.facility} removed")
    return 0


def _admin(name: str) -> Principal:
    return Principal(PrincipalKind.USER, name, None, roles=frozenset({"pacs_admin"}))


def _print(rows: list[dict[str, Any]], as_json: bool) -> None:
    from solent.cli import _print_table

    _print_table(rows, as_json)


def _service(settings: Settings) -> Any:
    from solent.app import build_archive

    archive = build_archive(settings)
    return archive, archive.services.identity


def _links(args: argparse.Namespace, settings: Settings) -> int:
    archive, _identity = _service(settings)
    try:
        rows = archive.services.records.links(cli_principal(), args.issuer, args.patient_id)
        _print(rows, args.json)
    finally:
        archive.close()
    return 0


def _history(args: argparse.Namespace, settings: Settings) -> int:
    archive, _identity = _service(settings)
    try:
        rows = archive.services.records.history(cli_principal(), args.issuer, args.patient_id)
        out = [
            {
                "event": r["pk"],
                "at": r["at"],
                "kind": r["kind"],
                "actor": r["actor"],
                "message": r.get("message_control_id") or r["message_pk"],
                "before": json.dumps(r["before"]),
                "after": json.dumps(r["after"]),
            }
            for r in rows
        ]
        _print(out if not args.json else rows, args.json)
    finally:
        archive.close()
    return 0


def _set_link(args: argparse.Namespace, settings: Settings) -> int:
    from solent.services.identity import IdentityRejected, PatientKey

    archive, identity = _service(settings)
    try:
        a = PatientKey(args.issuer_a, args.patient_id_a)
        b = PatientKey(args.issuer_b, args.patient_id_b)
        try:
            (identity.link if args.linked else identity.unlink)(_admin(args.by), a, b)
        except IdentityRejected as exc:
            print(f"solent: {exc}", file=sys.stderr)
            return 1
        print(f"{a} {'linked with' if args.linked else 'unlinked from'} {b}")
    finally:
        archive.close()
    return 0


def _queue(args: argparse.Namespace, settings: Settings) -> int:
    archive, _identity = _service(settings)
    try:
        status = None if args.all else "open"
        _print(archive.services.records.work_queue(cli_principal(), status=status), args.json)
    finally:
        archive.close()
    return 0


def _reverse(args: argparse.Namespace, settings: Settings) -> int:
    archive, identity = _service(settings)
    try:
        identity.reverse(_admin(args.by), args.event)
        print(f"identity event {args.event} reversed")
    finally:
        archive.close()
    return 0


def _send(args: argparse.Namespace, settings: Settings) -> int:
    from hl7.client import MLLPClient

    port = args.port or settings.hl7_port
    missing = [str(p) for p in args.paths if not p.is_file()]
    if missing:
        raise NotFound(f"no such message file: {', '.join(missing)}")
    worst = 0
    try:
        client = MLLPClient(args.host, port)
    except OSError as exc:
        raise SolentError(
            f"cannot connect to the MLLP port {args.host}:{port}: {exc.strerror or exc}; is "
            "`solent serve` running? (--host/--port, default SOLENT_HL7_PORT)"
        ) from exc
    with client:
        for path in args.paths:
            text = path.read_text(encoding="utf-8").replace("\r\n", "\r").replace("\n", "\r")
            ack = client.send_message(text.strip("\r") + "\r")
            ack_text = ack.decode("utf-8") if isinstance(ack, bytes) else str(ack)
            print(ack_text.replace("\r", "\n").strip())
            if "MSA|AA" not in ack_text:
                worst = 1
    return worst


def _messages(args: argparse.Namespace, settings: Settings) -> int:
    archive, _identity = _service(settings)
    try:
        rows = archive.services.records.hl7_messages(
            cli_principal(), status=args.status, limit=args.limit
        )
        keep = (
            "pk",
            "received_at",
            "sender",
            "control_id",
            "message_type",
            "status",
            "ack_code",
            "detail",
        )
        _print([{k: r[k] for k in keep} for r in rows], args.json)
    finally:
        archive.close()
    return 0
