"""`solent echo | send | query | retrieve | worklist add|steps`: DIMSE to registered nodes."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from solent.errors import ConfigurationError, NotFound
from solent.settings import Settings

if TYPE_CHECKING:  # pydicom is imported by the commands that use it: every `solent` command
    from pydicom.dataset import Dataset  # builds this parser, and pydicom costs ~0.4 s to import

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


def register(sub: Any) -> None:
    e = sub.add_parser("echo", help="C-ECHO a registered DICOM node")
    e.add_argument("ae_title")
    e.set_defaults(handler=_echo)

    s = sub.add_parser("send", help="C-STORE files to a registered DICOM node, as they are")
    s.add_argument("ae_title")
    s.add_argument("paths", nargs="+", type=Path)
    s.add_argument("--json", action="store_true", help="one JSON line per file")
    s.set_defaults(handler=_send)

    q = sub.add_parser("query", help="C-FIND on a registered DICOM node")
    q.add_argument("ae_title")
    _query_args(q)
    q.add_argument("--json", action="store_true", help="matches as DICOM JSON")
    q.set_defaults(handler=_query)

    r = sub.add_parser("retrieve", help="C-MOVE (default) or C-GET from a registered node")
    r.add_argument("ae_title")
    _query_args(r)
    r.add_argument("--move-to", help="C-MOVE destination AE title (default: our own AE title)")
    r.add_argument(
        "--get", action="store_true", help="C-GET: receive on this association and store here"
    )
    r.add_argument("--out", type=Path, help="with --get: write files to this folder instead")
    r.set_defaults(handler=_retrieve)

    w = sub.add_parser("worklist", help="Modality Worklist orders").add_subparsers(
        dest="action", required=True
    )
    wa = w.add_parser("add", help="add (or update) a scheduled procedure step")
    wa.add_argument("--patient-id", required=True)
    wa.add_argument("--issuer", required=True, help="trust code that issued the patient ID")
    wa.add_argument("--accession", required=True)
    wa.add_argument("--accession-issuer", help="issuer of the accession number (default: --issuer)")
    wa.add_argument("--modality", required=True)
    wa.add_argument("--date", default=None, help="scheduled start date YYYYMMDD (default today)")
    wa.add_argument("--time", default="", help="scheduled start time HHMMSS")
    wa.add_argument("--patient-name", default="")
    wa.add_argument("--birth-date", default="")
    wa.add_argument("--sex", default="")
    wa.add_argument("--station-aet", default="")
    wa.add_argument("--procedure", default="", help="requested procedure description")
    wa.add_argument("--procedure-id", default="")
    wa.add_argument("--step-id", default="")
    wa.add_argument("--study-uid", default="", help="default: a new UID")
    wa.add_argument("--referring-physician", default="")
    wa.set_defaults(handler=_worklist_add)
    ws = w.add_parser("steps", help="performed procedure steps modalities reported (MPPS)")
    ws.add_argument("--study-uid", default=None, help="only the steps of this study")
    ws.add_argument("--json", action="store_true")
    ws.set_defaults(handler=_worklist_steps)


def _query_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--level", choices=LEVELS, default="STUDY", type=str.upper)
    p.add_argument(
        "--model", choices=("study", "patient"), default="study", help="information model"
    )
    p.add_argument(
        "-k",
        "--key",
        action="append",
        default=[],
        metavar="KEYWORD[=VALUE]",
        help="matching or return key, e.g. -k PatientID=123 -k StudyDate=20240101-",
    )


def _node(settings: Settings, ae_title: str) -> Any:
    from solent.app import build_archive

    archive = build_archive(settings)
    node = archive.services.directory.node(ae_title)
    if node is None:
        raise NotFound(f"DICOM node {ae_title} is not registered; add it with `solent ae add`")
    return archive, node


def _identifier(level: str, keys: list[str]) -> Dataset:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for key in keys:
        name, _, value = key.partition("=")
        try:
            setattr(ds, name.strip(), value or None)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"bad key {key!r}: {exc}") from exc
    return ds


def _echo(args: argparse.Namespace, settings: Settings) -> int:
    from solent.protocols.dimse import scu

    _, node = _node(settings, args.ae_title)
    status = scu.echo(settings.ae_title, node)
    print(f"C-ECHO {node.ae_title}: status 0x{status:04X}")
    return 0 if status == 0 else 1


def _send(args: argparse.Namespace, settings: Settings) -> int:
    from solent.protocols.dimse import scu

    _, node = _node(settings, args.ae_title)
    files: list[Path] = []
    for p in args.paths:
        if p.is_dir():
            files.extend(sorted(x for x in p.rglob("*") if x.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise NotFound(f"no such file or folder: {p}")

    def show(r: scu.SentFile) -> None:
        if args.json:
            line: dict[str, Any] = {"path": str(r.path), "sop_instance_uid": r.sop_instance_uid}
            line |= {"status": r.status, "comment": r.comment, "ok": r.ok}
            print(json.dumps(line), flush=True)
        elif not r.ok:
            code = "not sent" if r.status is None else f"0x{r.status:04X}"
            print(
                f"{r.path}: {code}: {r.comment}" if r.comment else f"{r.path}: {code}",
                file=sys.stderr,
            )

    results = scu.send_files(settings.ae_title, node, files, on_result=show)
    failed = sum(1 for r in results if not r.ok)
    if not args.json:
        print(f"sent {len(results) - failed} of {len(results)} file(s) to {node.ae_title}")
    return 1 if failed else 0


def _query(args: argparse.Namespace, settings: Settings) -> int:
    from solent.protocols.dimse import scu

    _, node = _node(settings, args.ae_title)
    matches, status = scu.find(
        settings.ae_title, node, _identifier(args.level, args.key), args.model
    )
    if args.json:
        print(json.dumps([m.to_json_dict() for m in matches], indent=2))
    else:
        for m in matches:
            print("  ".join(f"{e.keyword}={e.value}" for e in m if e.keyword))
        print(f"{len(matches)} match(es), final status 0x{status:04X}", file=sys.stderr)
    return 0 if status == 0 else 1


def _retrieve(args: argparse.Namespace, settings: Settings) -> int:
    from solent.protocols.dimse import scu
    from solent.protocols.dimse.net import configure_pynetdicom

    archive, node = _node(settings, args.ae_title)
    ident = _identifier(args.level, args.key)
    if not args.get:
        dest = args.move_to or settings.ae_title
        out = scu.move(settings.ae_title, node, ident, dest, args.model)
    else:
        configure_pynetdicom(settings.tmp_dir / "dimse")
        out = scu.get(
            settings.ae_title, node, ident, _get_receiver(archive, node, args.out), args.model
        )
    print(
        f"status 0x{out.status:04X}: {out.completed} completed, {out.failed} failed, "
        f"{out.warning} warning"
    )
    return 0 if out.status == 0 else 1


def _get_receiver(archive: Any, node: Any, out_dir: Path | None) -> Any:
    import shutil

    from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
    from solent.protocols.dimse.store_scp import result_status

    principal = Principal(PrincipalKind.NODE, node.ae_title, node.trust_code, address=node.host)
    provenance = Provenance(
        Channel.DIMSE,
        calling_ae=node.ae_title,
        called_ae=archive.settings.ae_title,
        remote_address=node.host,
    )

    def on_store(event: Any) -> Any:
        path = Path(event.dataset_path)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            name = str(event.request.AffectedSOPInstanceUID)
            if not all(c.isdigit() or c == "." for c in name):
                return 0xC000
            shutil.copyfile(path, out_dir / f"{name}.dcm")
            return 0x0000
        return result_status(
            archive.services.ingest.ingest_file(path, principal, provenance, move=True)
        )

    return on_store


def _worklist_add(args: argparse.Namespace, settings: Settings) -> int:
    from solent.app import build_archive
    from solent.security.cli import cli_principal

    archive = build_archive(settings)
    when = args.date or date.today().strftime("%Y%m%d")
    if len(when) != 8 or not when.isdigit():
        raise ConfigurationError("--date must be YYYYMMDD")
    order = {
        "accession_number": args.accession,
        "accession_issuer": args.accession_issuer or args.issuer,
        "patient_issuer": args.issuer,
        "patient_id": args.patient_id,
        "patient_name": args.patient_name or None,
        "patient_birth_date": args.birth_date or None,
        "patient_sex": args.sex or None,
        "study_instance_uid": args.study_uid or _new_uid(),
        "requested_procedure_id": args.procedure_id or args.accession,
        "requested_procedure_description": args.procedure or None,
        "referring_physician": args.referring_physician or None,
        "modality": args.modality.upper(),
        "scheduled_station_ae_title": args.station_aet or None,
        "scheduled_start_date": when,
        "scheduled_start_time": args.time or None,
        "scheduled_procedure_step_id": args.step_id or args.accession,
        "scheduled_procedure_step_description": args.procedure or None,
    }
    new = archive.services.inbox.add_order(cli_principal(), order)
    verb = "added" if new else "updated"
    print(f"order {args.accession} {verb}: {order['modality']} on {when} for {args.patient_id}")
    return 0


def _worklist_steps(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from solent.app import build_archive
    from solent.security.cli import cli_principal

    archive = build_archive(settings)
    rows = archive.services.performed_steps.steps(cli_principal(), args.study_uid)
    if args.json:
        print(json.dumps(rows, default=str, indent=1))
        return 0
    if not rows:
        print("no performed procedure steps")
    for r in rows:
        print(
            f"{r['updated_at']:%Y-%m-%d %H:%M}  {r['status']:<12} {r['trust_code']:<6} "
            f"{r['calling_ae']:<16} {r['accession_number'] or '-':<16} {r['patient_id'] or '-'}"
            f"  {r['sop_instance_uid']}  received {r['received_instances']}"
            f" of {r['performed_instances']}"
        )
    return 0


def _new_uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())
