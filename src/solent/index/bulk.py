"""Synthetic index content for benchmarks and tests: bulk INSERTs, no files, no blobs.

Not an ingest path: the rows it writes point at no stored bytes, so retrieval of these
instances fails by design. It exists so that query latency can be measured at 100k studies in
seconds instead of hours of C-STORE.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Connection, Table, func, insert, select, text

from solent.domain.nhs_number import complete
from solent.index import schema as t
from solent.index.sql import Index, now

TRUSTS = ("ZZA", "ZZB", "ZZC", "ZZD")
#: Tables whose rows feed the kept access rule (trigger ``solent_visibility``, migration 0009).
VISIBILITY_TRIGGERED = ("patient", "study", "orders", "patient_link")
MODALITIES = ("CT", "MR", "CR", "DX", "US", "MG", "PT", "NM", "XA", "SR")
SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",
    "SR": "1.2.840.10008.5.1.4.1.1.88.22",
}
FAMILY = ("SMITH", "JONES", "TAYLOR", "BROWN", "WILLIAMS", "WILSON", "JOHNSON", "DAVIES", "PATEL")
GIVEN = ("JAMES", "MARY", "OLIVER", "AMELIA", "GEORGE", "ISLA", "HARRY", "AVA", "NOAH", "MIA")
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@dataclass
class SyntheticSummary:
    """What was written, with a few keys a benchmark can query for."""

    patients: int = 0
    studies: int = 0
    series: int = 0
    instances: int = 0
    sample_patients: list[tuple[str, str]] = field(default_factory=list)  # (issuer, local_id)
    sample_nhs_numbers: list[str] = field(default_factory=list)


def _next_pk(conn: Connection, table: Table) -> int:
    return int(conn.execute(select(func.coalesce(func.max(table.c.pk), 0))).scalar_one()) + 1


def _copy(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL COPY through the transaction's own psycopg connection (~10x executemany)."""
    columns = list(rows[0])
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    names = ", ".join(f'"{c}"' for c in columns)
    with cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])


@contextlib.contextmanager
def visibility_triggers_off(conn: Connection) -> Iterator[None]:
    """The kept access rule's triggers (migration 0009) off for a bulk write, in the caller's
    transaction (a failure rolls the switch back with the rows): row by row they would
    recompute each new patient's neighbourhood as it arrives. The caller recomputes what it
    wrote before leaving (``solent_visibility_refresh`` or ``_rebuild``)."""
    for name in VISIBILITY_TRIGGERED:
        conn.execute(text(f"ALTER TABLE {name} DISABLE TRIGGER solent_visibility"))
    yield
    for name in VISIBILITY_TRIGGERED:
        conn.execute(text(f"ALTER TABLE {name} ENABLE TRIGGER solent_visibility"))


def _copy_kept_visible(conn: Connection, rows: dict[str, list[dict[str, Any]]]) -> None:
    """COPY one batch, then recompute the batch's records in one call."""
    with visibility_triggers_off(conn):
        for table in (t.patient, t.study, t.series, t.instance):
            if rows[table.name]:
                _copy(conn, table, rows[table.name])
        pks = {r["pk"] for r in rows["patient"]} | {r["patient_pk"] for r in rows["study"]}
        conn.execute(
            text("SELECT solent_visibility_refresh(CAST(:pks AS bigint[]), '{}')"),
            {"pks": sorted(pks)},
        )


def _nhs(rng: random.Random) -> str:
    while True:
        number = complete("999" + f"{rng.randrange(10**6):06d}")
        if number is not None:
            return number


def _ensure_trusts(index: Index, trusts: Sequence[str]) -> None:
    known = {tr.code for tr in index.list_trusts()}
    for code in trusts:
        if code not in known:
            index.add_trust(code, f"Synthetic trust {code}")


def fill_synthetic(
    index: Index,
    n_studies: int,
    *,
    trusts: Sequence[str] = TRUSTS,
    studies_per_patient: int = 3,
    series_per_study: int = 2,
    instances_per_series: int = 1,
    seed: int = 0,
    batch: int = 2000,
) -> SyntheticSummary:
    """Append ``n_studies`` synthetic studies (patients spread over ``trusts``) to ``index``.

    Patients carry valid test-range NHS numbers (999...), half of them verified; local IDs are
    ``<trust><seq>``; study dates span 2010-2026; each series has one modality. Appends to
    what exists (pks continue), so it can run twice on one index.
    """
    rng = random.Random(seed)
    _ensure_trusts(index, trusts)
    summary = SyntheticSummary()
    with index.read() as conn:
        pk = {tb.name: _next_pk(conn, tb) for tb in (t.patient, t.study, t.series, t.instance)}
    uid_root = f"2.25.9{seed}{pk['study']}"
    studies_per_patient = max(1, studies_per_patient)
    first_day = date(2010, 1, 1)
    span = (date(2026, 11, 1) - first_day).days
    stamp = now()
    done = 0
    while done < n_studies:
        rows: dict[str, list[dict[str, Any]]] = {
            "patient": [],
            "study": [],
            "series": [],
            "instance": [],
        }
        chunk = min(batch, n_studies - done)
        for k in range(chunk):
            s_no = done + k
            patient_no = s_no // studies_per_patient
            issuer = trusts[patient_no % len(trusts)]
            p_pk = pk["patient"] + patient_no
            if s_no % studies_per_patient == 0:
                local_id = f"{issuer}{p_pk:08d}"
                nhs = _nhs(rng)
                name = f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}"
                born = date(1930, 1, 1) + timedelta(days=rng.randrange(90 * 365))
                rows["patient"].append(
                    {
                        "pk": p_pk,
                        "issuer": issuer,
                        "local_id": local_id,
                        "name": name,
                        "name_upper": name,
                        "birth_date": born.strftime("%Y%m%d"),
                        "sex": rng.choice("MF"),
                        "nhs_number": nhs,
                        "nhs_number_valid": True,
                        "nhs_number_verified": patient_no % 2 == 0,
                        "placeholder": False,
                        "created_at": stamp,
                        "updated_at": stamp,
                    }
                )
                if len(summary.sample_patients) < 1000:
                    summary.sample_patients.append((issuer, local_id))
                    summary.sample_nhs_numbers.append(nhs)
            study_pk = pk["study"] + s_no
            day = first_day + timedelta(days=rng.randrange(span))
            mods = [rng.choice(MODALITIES) for _ in range(series_per_study)]
            rows["study"].append(
                {
                    "pk": study_pk,
                    "study_uid": f"{uid_root}.{s_no}",
                    "patient_pk": p_pk,
                    "trust_code": issuer,
                    "study_date": day.strftime("%Y%m%d"),
                    "study_time": f"{rng.randrange(24):02d}{rng.randrange(60):02d}00",
                    "accession_number": f"{issuer}{day.year % 100:02d}{s_no:07d}",
                    "accession_issuer": issuer,
                    "study_id": str(s_no % 10000),
                    "study_description": f"{mods[0]} synthetic study",
                    "referring_physician": f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}",
                    "modalities": "\\".join(dict.fromkeys(mods)),
                    "num_series": series_per_study,
                    "num_instances": series_per_study * instances_per_series,
                    "size_bytes": 0,
                    "created_at": stamp,
                    "updated_at": stamp,
                }
            )
            for j, modality in enumerate(mods):
                series_pk = pk["series"] + s_no * series_per_study + j
                rows["series"].append(
                    {
                        "pk": series_pk,
                        "series_uid": f"{uid_root}.{s_no}.{j + 1}",
                        "study_pk": study_pk,
                        "modality": modality,
                        "series_number": j + 1,
                        "series_description": f"{modality} series {j + 1}",
                        "body_part": rng.choice(("CHEST", "HEAD", "ABDOMEN", "KNEE")),
                        "series_date": day.strftime("%Y%m%d"),
                        "series_time": None,
                        "num_instances": instances_per_series,
                        "created_at": stamp,
                    }
                )
                for n in range(instances_per_series):
                    sop_uid = f"{uid_root}.{s_no}.{j + 1}.{n + 1}"
                    rows["instance"].append(
                        {
                            "pk": pk["instance"]
                            + (s_no * series_per_study + j) * instances_per_series
                            + n,
                            "sop_instance_uid": sop_uid,
                            "series_pk": series_pk,
                            "sop_class_uid": SOP_CLASS[modality],
                            "instance_number": n + 1,
                            "rows": 512,
                            "columns": 512,
                            "number_of_frames": 1,
                            "transfer_syntax_uid": EXPLICIT_LE,
                            "size_bytes": 0,
                            "sha256": "0" * 64,
                            "blob_key": "synthetic/none",
                            "frames": None,
                            "trust_code": issuer,
                            "received_via": "import",
                            "received_by": "system:synthetic",
                            "received_at": stamp,
                        }
                    )

        def write(conn: Connection, rows: dict[str, list[dict[str, Any]]] = rows) -> None:
            if index.dialect == "postgresql":
                _copy_kept_visible(conn, rows)
                return
            for table in (t.patient, t.study, t.series, t.instance):
                if rows[table.name]:
                    conn.execute(insert(table), rows[table.name])

        index.write(write)
        summary.patients += len(rows["patient"])
        summary.studies += len(rows["study"])
        summary.series += len(rows["series"])
        summary.instances += len(rows["instance"])
        done += chunk

    if index.dialect == "postgresql":
        # Explicit pks do not advance the sequences; later ingests must not collide.
        def bump(conn: Connection) -> None:
            for name in ("patient", "study", "series", "instance"):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{name}', 'pk'), "  # noqa: S608
                        f"(SELECT COALESCE(MAX(pk), 1) FROM {name}))"
                    )
                )
            conn.execute(text("ANALYZE"))

        index.write(bump)
    else:
        with index.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    return summary
