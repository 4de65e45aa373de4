"""The verification report of one source, as CSV (for spreadsheets) and HTML (for sign-off).

Written by hand with the standard library: a table of rows needs no template engine.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path
from typing import Any

COLUMNS = (
    "study_uid",
    "series_uid",
    "sop_uid",
    "patient_id",
    "state",
    "verdict",
    "source_sha256",
    "archive_sha256",
    "reason",
    "locator",
)


def write_csv(report: dict[str, Any], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fp:
        w = csv.DictWriter(fp, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        for item in report["items"]:
            w.writerow(item)


def write_inventory_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fp:
        if not rows:
            return
        w = csv.DictWriter(fp, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_html(report: dict[str, Any], path: Path) -> None:
    e = html.escape
    counts = "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in report["counts"].items())
    problems = [i for i in report["items"] if i["verdict"] != "verified"]
    rows = "".join(
        "<tr>" + "".join(f"<td>{e(str(i.get(c) or ''))}</td>" for c in COLUMNS) + "</tr>"
        for i in problems
    )
    quarantine = "".join(
        f"<tr><td>{e(q['sop_uid'])}</td><td>{e(q['archive_sha256'])}</td>"
        f"<td>{e(q['source_sha256'])}</td><td>{e(q['path'])}</td><td>{e(q['status'])}</td></tr>"
        for q in report["quarantine"]
    )
    best = "".join(
        f"<tr><td>{e(b['sop_uid'])}</td><td>{e(b['verdict'])}</td>"
        f"<td>{e(str(b['reason'] or ''))}</td></tr>"
        for b in report.get("best_copies", [])
    )
    verdict = (
        "Nothing unresolved."
        if report["unresolved"] == 0
        else f"{report['unresolved']} instances unresolved: sign-off needed."
    )
    head = "".join(f"<th>{e(c)}</th>" for c in COLUMNS)
    path.write_text(
        f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Migration verification: {e(report["source"])}</title>
<style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:2px 6px;font-size:12px}}</style></head>
<body><h1>Migration verification: source {e(report["source"])}</h1>
<p>{report["studies"]} studies, {report["series"]} series, {report["instances"]} instances listed
at the source; {report["studies_in_archive"]} studies verified in the archive.
Hashes are SHA-256 of each instance's content after its File Meta header.</p>
<p><strong>{e(verdict)}</strong></p>
<h2>Counts</h2><table>{counts}</table>
<h2>Instances not verified</h2><table><tr>{head}</tr>{rows}</table>
<h2>Best copy (several sources held the instance; R54)</h2>
<p>Lossless over lossy, original over derived, then the source with more of the series.</p>
<table><tr><th>sop_uid</th><th>verdict</th><th>which copy is served, and why</th></tr>
{best}</table>
<h2>Kept copies (same SOP Instance UID, different content)</h2>
<p>Status "open" needs a decision; "superseded" lost to a better copy. Kept in the blob store
under the key shown.</p>
<table><tr><th>sop_uid</th><th>archive sha256</th><th>source sha256</th><th>kept at</th>
<th>status</th></tr>{quarantine}</table>
</body></html>
""",
        encoding="utf-8",
    )
