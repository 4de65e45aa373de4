"""`solent user`, `solent token`, `solent audit verify|seal|purge|export|search`.

The first administrator is created here (there are no default passwords); whoever runs the CLI
on the server acts as the system and is audited as ``cli:<os user>``. Only here can a regional
administrator (pacs_admin of no trust: `solent user add NAME --role pacs_admin` without --trust)
be created; the JSON API's administrators are limited to their own trusts.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from solent.domain.principal import Principal, PrincipalKind
from solent.errors import ConfigurationError, InvalidInput
from solent.settings import Settings


def register(sub: Any) -> None:
    u = sub.add_parser("user", help="manage local users").add_subparsers(
        dest="action", required=True
    )
    ua = u.add_parser("add", help="add a user (the password is asked for unless --password)")
    ua.add_argument("name")
    ua.add_argument(
        "--trust",
        help="code of the user's trust (organisation); omit only for a regional administrator "
        "(role pacs_admin alone), who manages the users of every trust",
    )
    ua.add_argument(
        "--role",
        action="append",
        required=True,
        help="clinician, radiologist, mdt_coordinator, pacs_admin, auditor, integration "
        "(repeat or comma-separate)",
    )
    ua.add_argument("--also-trust", action="append", default=[], help="further trusts (repeat)")
    ua.add_argument(
        "--password",
        help="the password (else asked for twice on a terminal, or read as one line from "
        "standard input when that is not a terminal)",
    )
    ua.add_argument(
        "--no-password", action="store_true", help="service account: API tokens only, no login"
    )
    ua.set_defaults(handler=_user_add)
    ul = u.add_parser("list", help="list users")
    ul.add_argument("--json", action="store_true")
    ul.set_defaults(handler=_user_list)
    ud = u.add_parser("disable", help="disable a user (their tokens stop working at once)")
    ud.add_argument("name")
    ud.set_defaults(handler=_user_disable)
    ue = u.add_parser("enable", help="enable a disabled user again")
    ue.add_argument("name")
    ue.set_defaults(handler=_user_enable)
    up = u.add_parser("password", help="set a user's password (their sessions and tokens end)")
    up.add_argument("name")
    up.add_argument(
        "--password",
        help="the new password (else asked for twice on a terminal, or read as one line from "
        "standard input when that is not a terminal)",
    )
    up.set_defaults(handler=_user_password)
    ur = u.add_parser("roles", help="replace a user's roles (audited: what was added, removed)")
    ur.add_argument("name")
    ur.add_argument("--role", action="append", required=True, help="repeat or comma-separate")
    ur.set_defaults(handler=_user_roles)
    ut = u.add_parser("trusts", help="replace a user's trust and further trusts (audited)")
    ut.add_argument("name")
    ut.add_argument("--trust", required=True)
    ut.add_argument("--also-trust", action="append", default=[], help="further trusts (repeat)")
    ut.set_defaults(handler=_user_trusts)
    un = u.add_parser(
        "national-roles",
        help="replace a user's national RBAC roles (R33; needs SOLENT_RBAC_POLICY; audited)",
    )
    un.add_argument("name")
    un.add_argument(
        "--role",
        action="append",
        default=[],
        help="ORG:R-CODE[:B0000+B0001], e.g. ZZA:R8000:B0264 (repeat; none: remove them all)",
    )
    un.set_defaults(handler=_user_national_roles)
    uo = u.add_parser("logout", help="end every session and API token of a user")
    uo.add_argument("name")
    uo.set_defaults(handler=_user_logout)

    t = sub.add_parser("token", help="issue, list and revoke tokens").add_subparsers(
        dest="action", required=True
    )
    tc = t.add_parser("create", help="print a bearer token for a user (last line of output)")
    tc.add_argument("--user", required=True)
    tc.add_argument(
        "--api", action="store_true", help="a long-lived service API token instead of a login one"
    )
    tc.add_argument(
        "--days", type=int, help="lifetime of an --api token (default: SOLENT_API_TOKEN_DAYS)"
    )
    tc.add_argument("--label", default="", help="what the --api token is for")
    tc.add_argument(
        "--org", help="the organisation (ODS code) the login token's session acts for (R33)"
    )
    tc.set_defaults(handler=_token_create)
    tl = t.add_parser("list", help="list API tokens (never the secret): id, user, expiry")
    tl.add_argument("--user")
    tl.add_argument("--json", action="store_true")
    tl.set_defaults(handler=_token_list)
    tr = t.add_parser("revoke", help="revoke an API token by its id (see `solent token list`)")
    tr.add_argument("id", type=int)
    tr.set_defaults(handler=_token_revoke)

    a = sub.add_parser("audit", help="the audit trail").add_subparsers(dest="action", required=True)
    av = a.add_parser("verify", help="prove the hash chain: no record changed, deleted or moved")
    av.add_argument("--json", action="store_true")
    av.set_defaults(handler=_audit_verify)
    aseal = a.add_parser(
        "seal",
        help="once, after upgrading: re-chain records written before the audit key under it",
    )
    aseal.set_defaults(handler=_audit_seal)
    ap = a.add_parser(
        "purge",
        help="remove records older than SOLENT_AUDIT_RETENTION_YEARS (R38), archived first",
    )
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--archive", type=Path, help="new file to write the removed records to (JSON lines)"
    )
    where.add_argument(
        "--no-archive", action="store_true", help="discard them (Information Governance said so)"
    )
    ap.set_defaults(handler=_audit_purge)
    ae = a.add_parser("export", help="export records as DICOM audit XML or FHIR AuditEvent")
    ae.add_argument("--format", choices=("dicom", "fhir"), default="dicom")
    ae.add_argument("--after", type=int, default=0, help="only records after this sequence number")
    ae.add_argument("--output", type=Path, help="file to write (default: standard output)")
    ae.add_argument(
        "--syslog",
        action="store_true",
        help="send DICOM audit messages to SOLENT_AUDIT_SYSLOG_URL (RFC 5424 over TLS)",
    )
    ae.set_defaults(handler=_audit_export)
    asr = a.add_parser("search", help="records of one patient or one user")
    asr.add_argument("--patient-id")
    asr.add_argument("--issuer")
    asr.add_argument("--nhs-number")
    asr.add_argument("--user")
    asr.add_argument("--limit", type=int, default=100)
    asr.set_defaults(handler=_audit_search)


def _program() -> str:
    """How to call this CLI again from here: `.venv/bin/solent` after `make run`, which has
    not put `solent` on the PATH; plain `solent` when it was found on the PATH."""
    argv0 = Path(sys.argv[0])
    if argv0.name != "solent" or argv0.parent == Path():
        return "solent"
    try:
        return str(argv0.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return "solent"


def login_hint(archive: Any) -> str:
    """What `solent serve` prints so a first-time user knows how to get in."""
    solent = _program()
    settings = archive.settings
    scheme = "https" if settings.http_tls_cert else "http"
    port = settings.http_port or "PORT"  # 0: the port is chosen later (SOLENT_READY says)
    host = settings.bind_address
    host = f"[{host}]" if ":" in host else host
    if not archive.services.users.list():
        return (
            "No users yet; every route but /health needs a bearer token. Create one, e.g.:\n"
            f"  {solent} user add alice --trust ZZA --role clinician\n"
            f"  {solent} token create --user alice    (prints the token as its last line)\n"
            f"  curl -H 'Authorization: Bearer <token>' "
            f"{scheme}://{host}:{port}/api/studies"
        )
    return (
        "Log in: POST /api/auth/token with HTTP Basic user:password for a bearer token, "
        f"or `{solent} token create --user NAME`."
    )


def cli_principal() -> Principal:
    """Whoever runs the CLI on the server: trusted like the machine, audited by OS user."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return Principal(PrincipalKind.SYSTEM, f"cli:{who}", None)


def _archive(settings: Settings) -> Any:
    from solent.app import build_archive

    return build_archive(settings)


def _users(settings: Settings) -> Any:
    from solent.compose import user_service

    return user_service(settings)


def _ask_password() -> str:
    if sys.stdin is None or not sys.stdin.isatty():
        # A script or a secret store pipes it in: one line, kept out of `ps` and shell history.
        piped = sys.stdin.readline().rstrip("\r\n") if sys.stdin is not None else ""
        if not piped:
            raise InvalidInput(
                "no password: give --password, pipe it on standard input, or run on a terminal "
                "to be asked (--no-password for a service account)"
            )
        return piped
    first = getpass.getpass("Password (12+ characters): ")
    if first != getpass.getpass("Again: "):
        raise InvalidInput("the two passwords differ")
    return first


def _user_add(args: argparse.Namespace, settings: Settings) -> int:
    from solent.security.users import parse_roles

    roles = parse_roles(args.role)
    if args.no_password and args.password:
        raise InvalidInput("--no-password and --password exclude each other")
    password = None if args.no_password else (args.password or _ask_password())
    others = tuple(c.strip() for v in args.also_trust for c in v.split(",") if c.strip())
    users = _users(settings)
    row = users.add(cli_principal(), args.name, args.trust, roles, password, others)
    where = f"at trust {row.trust}" if row.trust else "as a regional administrator (all trusts)"
    print(f"user {row.name} added {where} with role(s) {', '.join(row.roles)}")
    return 0


def _user_list(args: argparse.Namespace, settings: Settings) -> int:
    users = _users(settings)
    rows = [
        {
            "name": r.name,
            "trust": r.trust or "(regional)",
            "other_trusts": ",".join(r.other_trusts),
            "roles": ",".join(r.roles),
            "login": "password" if r.password_hash else "api-token",
            "disabled": r.disabled,
        }
        for r in users.list()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("(no users; add one with `solent user add NAME --trust CODE --role ROLE`)")
    else:
        cols = list(rows[0])
        widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
        print("  ".join(c.upper().ljust(widths[c]) for c in cols))
        for r in rows:
            print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
    _warn_mixed_roles(users.list())
    return 0


def _warn_mixed_roles(rows: list[Any]) -> None:
    """Accounts made before administrators were kept apart from patient access (issue 11)."""
    from solent.security.users import NOT_WITH_ADMIN

    for r in rows:
        if "pacs_admin" in r.roles and set(r.roles) & set(NOT_WITH_ADMIN):
            print(
                f"warning: {r.name} holds pacs_admin with clinical or auditor roles, which is "
                f"no longer allowed; split it: solent user roles {r.name} --role ...",
                file=sys.stderr,
            )


def _user_enable(args: argparse.Namespace, settings: Settings) -> int:
    _users(settings).enable(cli_principal(), args.name)
    print(f"user {args.name} enabled")
    return 0


def _user_roles(args: argparse.Namespace, settings: Settings) -> int:
    from solent.security.users import parse_roles

    row = _users(settings).set_roles(cli_principal(), args.name, parse_roles(args.role))
    print(f"user {row.name} now has role(s) {', '.join(row.roles)}")
    return 0


def _user_trusts(args: argparse.Namespace, settings: Settings) -> int:
    others = tuple(c.strip() for v in args.also_trust for c in v.split(",") if c.strip())
    row = _users(settings).set_trusts(cli_principal(), args.name, args.trust, others)
    print(f"user {row.name} now at trust(s) {', '.join(sorted(row.trusts))}")
    return 0


def _user_national_roles(args: argparse.Namespace, settings: Settings) -> int:
    from solent.security.users import parse_national_role

    roles = tuple(parse_national_role(v) for v in args.role)
    row = _users(settings).set_national_roles(cli_principal(), args.name, roles)
    held = [f"{r.org}:{r.job_role}:{'+'.join(sorted(r.activities))}" for r in row.national_roles]
    print(f"user {row.name} now has national role(s) {', '.join(held) or '(none)'}")
    return 0


def _user_logout(args: argparse.Namespace, settings: Settings) -> int:
    _users(settings).end_sessions(cli_principal(), args.name)
    print(f"every session and API token of {args.name} ended")
    return 0


def _user_disable(args: argparse.Namespace, settings: Settings) -> int:
    users = _users(settings)
    users.disable(cli_principal(), args.name)
    print(f"user {args.name} disabled")
    return 0


def _user_password(args: argparse.Namespace, settings: Settings) -> int:
    users = _users(settings)
    users.set_password(cli_principal(), args.name, args.password or _ask_password())
    print(f"password of {args.name} set; their sessions and API tokens ended")
    return 0


def _token_create(args: argparse.Namespace, settings: Settings) -> int:
    users = _users(settings)
    if args.api:
        issued = users.issue_api_token(cli_principal(), args.user, args.label, args.days)
    else:
        issued = users.issue(args.user, actor=cli_principal(), org=args.org)
    until = issued.expires_at.isoformat() if issued.expires_at else "revoked"
    ident = f" (id {issued.id})" if issued.id is not None else ""
    print(f"bearer token{ident} for {args.user}, valid until {until}:", file=sys.stderr)
    print(issued.token)
    return 0


def _token_list(args: argparse.Namespace, settings: Settings) -> int:
    rows = [
        {
            "id": r.id,
            "user": r.user_name,
            "label": r.label,
            "created": r.created_at.isoformat(timespec="seconds"),
            "expires": r.expires_at.isoformat(timespec="seconds") if r.expires_at else "never",
            "revoked": r.revoked,
        }
        for r in _users(settings).list_tokens(cli_principal(), args.user)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("(no API tokens; create one with `solent token create --api --user NAME`)")
    else:
        cols = list(rows[0])
        widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
        print("  ".join(c.upper().ljust(widths[c]) for c in cols))
        for r in rows:
            print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
    return 0


def _token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    row = _users(settings).revoke_token(cli_principal(), args.id)
    print(f"API token {row.id} of {row.user_name} revoked")
    return 0


def _audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    archive = _archive(settings)
    report = archive.services.audit.verify(cli_principal())
    if args.json:
        print(
            json.dumps(
                {"intact": report.intact, "records": report.records, "problems": report.problems}
            )
        )
    else:
        for problem in report.problems:
            print(f"TAMPERED: {problem}")
        print(
            f"audit trail intact: {report.records} records, hash chain verified"
            if report.intact
            else f"audit trail NOT intact: {len(report.problems)} problem(s) in "
            f"{report.records} records"
        )
    return 0 if report.intact else 1


def _audit_seal(args: argparse.Namespace, settings: Settings) -> int:
    archive = _archive(settings)
    report = archive.services.audit.seal(
        cli_principal(), progress=lambda n: print(f"  {n} records re-chained", file=sys.stderr)
    )
    if not report.intact:
        for problem in report.problems:
            print(f"TAMPERED: {problem}")
        print("audit trail NOT sealed: the existing chain does not verify (nothing was changed)")
        return 1
    if report.unkeyed == 0:
        print(
            f"audit trail already sealed: all {report.records} records are chained under the "
            "audit key; nothing changed"
        )
        return 0
    print(
        f"audit trail sealed: {report.records} records chained under the audit key "
        f"({report.unkeyed} were unkeyed)"
    )
    return 0


def _audit_purge(args: argparse.Namespace, settings: Settings) -> int:
    archive = _archive(settings)
    out = None
    if args.archive is not None:
        try:
            out = args.archive.open("x", encoding="utf-8")  # never overwrite an archive
        except FileExistsError as exc:
            raise InvalidInput(f"{args.archive} exists: name a new archive file") from exc
        except OSError as exc:  # no such folder, not writable...: said, not a traceback
            raise InvalidInput(f"{args.archive}: cannot create it: {exc.strerror}") from exc

    def keep(rows: list[dict[str, Any]]) -> None:
        if out is not None:
            for row in rows:
                out.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())  # on disk before the records leave the index

    try:
        report = archive.services.audit.purge(cli_principal(), keep)
    finally:
        if out is not None:
            out.close()
    if report.problems:
        for problem in report.problems:
            print(f"TAMPERED: {problem}")
        print("audit trail NOT purged: the chain does not verify (nothing was removed)")
        return 1
    where = f", archived to {args.archive}" if args.archive else ""
    print(
        f"{report.purged} audit records purged{where}; the chain now starts after record "
        f"{report.through_seq} (checkpoint {report.checkpoint[:16]}...)"
    )
    return 0


def _audit_export(args: argparse.Namespace, settings: Settings) -> int:
    from solent.security import auditformats, syslog

    archive = _archive(settings)
    records = archive.services.audit.export(
        cli_principal(), after_seq=args.after, audit_export=args.format, syslog=args.syslog
    )
    if args.syslog:
        if not settings.audit_syslog_url:
            raise ConfigurationError("set SOLENT_AUDIT_SYSLOG_URL=tls://host:port first")
        sent = syslog.send(
            settings.audit_syslog_url,
            (syslog.rfc5424(auditformats.dicom_xml(r), r["outcome"], at=r["at"]) for r in records),
            settings.audit_syslog_ca_file,
        )
        print(f"{sent} audit messages sent to {settings.audit_syslog_url}")
    else:
        if args.format == "fhir":
            text = json.dumps(auditformats.fhir_bundle(records), indent=1)
        else:
            text = "\n".join(auditformats.dicom_xml(r) for r in records)
        if args.output:
            args.output.write_text(text + "\n", encoding="utf-8")
            print(f"{len(records)} audit records written to {args.output}")
        else:
            print(text)
    return 0


def _audit_search(args: argparse.Namespace, settings: Settings) -> int:
    archive = _archive(settings)
    criteria = {
        "patient_id": args.patient_id,
        "patient_issuer": args.issuer,
        "nhs_number": args.nhs_number,
        "actor_name": args.user,
    }
    rows = archive.services.audit.search(cli_principal(), **criteria, limit=args.limit)
    print(json.dumps(rows, indent=1, default=str))
    return 0
