"""`solent migrate` against real legacy PACS: two Orthanc instances and a DICOMDIR folder,
filled with the overlaps and conflicts of issue 13, then a SIGKILL mid-transfer and a resume.

Every command runs as a PACS manager would run it (the `solent` program); the archive is then
opened to check where each instance landed, under which record, and its audit trail.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pydicom
import pytest
from bench.migration_data import Patient, Study, instance_bytes, upload, upload_study
from bench.orthanc import ORTHANC_AET, OrthancServer
from pydicom.fileset import FileSet
from sqlalchemy import select

from solent.app import build_archive
from solent.cli import main
from solent.domain import nhs_number as nhs
from solent.index import schema as t
from solent.serve_process import serve_env, solent_program
from solent.services.migration import content_digest
from solent.settings import load_settings
from tests.conftest import require, require_corpus

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]
CALLING = "MIGRATE"


def number(nine: str) -> str:
    full = nhs.complete(nine)
    assert full is not None
    return full


N1, N2, N4, N5, N6 = (
    number(x) for x in ("943476591", "943476592", "943476594", "943476597", "943476599")
)
INVALID = N6[:-1] + str((int(N6[-1]) + 1) % 10)
assert not nhs.is_valid(INVALID)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Cli:
    def __init__(self, data: Path) -> None:
        self.env = serve_env(data)
        self.data = data

    def __call__(self, *args: str, ok: tuple[int, ...] = (0,)) -> Result:
        """Run a `solent` command in this process (the program's start-up costs seconds on a
        shared machine); the SIGKILL test runs the real program."""
        out, err = io.StringIO(), io.StringIO()
        with (
            mock.patch.dict(os.environ, self.env, clear=True),
            redirect_stdout(out),
            redirect_stderr(err),
        ):
            code = main(list(args))
        r = Result(code, out.getvalue(), err.getvalue())
        assert r.returncode in ok, (args, r)
        return r

    def run_json(self, source: str) -> dict[str, Any]:
        r = self("migrate", "run", source, "--json")
        return json.loads(r.stdout.strip().splitlines()[-1])["summary"]  # type: ignore[no-any-return]

    def plan(self, source: str) -> dict[str, Any]:
        return json.loads(self("migrate", "run", source, "--dry-run").stdout)  # type: ignore[no-any-return]

    def verify(self, source: str, *extra: str) -> tuple[int, dict[str, Any]]:
        r = self("migrate", "verify", source, "--json", *extra, ok=(0, 1))
        return r.returncode, json.loads(r.stdout)


def orthanc() -> OrthancServer:
    return OrthancServer(client_aet=CALLING, client_port=9)  # we only call it: C-FIND, C-GET


@pytest.fixture
def two_orthancs() -> Iterator[tuple[OrthancServer, OrthancServer]]:
    require(shutil.which("Orthanc") is not None, "the `Orthanc` program")
    with orthanc() as a, orthanc() as b:
        yield a, b


def add_source(cli: Cli, name: str, o: OrthancServer, trust: str, *extra: str) -> None:
    cli(
        "migrate", "source", "add", name,
        "--dimse", f"{ORTHANC_AET}@127.0.0.1:{o.dicom_port}",
        "--trust", trust, "--nhs-traced", "--calling-ae", CALLING, *extra,
    )  # fmt: skip


def test_two_orthancs_and_a_dicomdir_migrate_as_planted(
    tmp_path: Path, two_orthancs: tuple[OrthancServer, OrthancServer]
) -> None:
    a, b = two_orthancs
    # Trust A's legacy PACS.
    shared = Patient("A123456", "SHARED^ANNE", "19700101", "F", N1)
    s1 = Study(shared, "20190301")
    s1a = s1.add_series(3)
    conflict_a = Patient("A222", "CONF^ALAN", "19800202", "M", N2)
    s2 = Study(conflict_a, "20200101")
    s2.add_series(2)
    invalid = Patient("A333", "BAD^NUMBER", "19600606", "F", INVALID)
    s3 = Study(invalid, "20210101")
    s3.add_series(1)
    reused_a = Patient("REUSED1", "FIRST^PERSON", "19900101", "F", N4)
    s4 = Study(reused_a, "20220101")
    s4.add_series(1)
    for study in (s1, s2, s3, s4):
        upload_study(a.base_url, study)
    # Trust B's: the same study (IEP copy under an external ID) with an extra series and one
    # instance whose content differs; NHS number N2 with another date of birth; REUSED1 is
    # another person at trust B.
    copy = Patient("B-EXT-99", "SHARED^ANNE", "19700101", "F", N1)
    s1b = Study(copy, "20190301", uid=s1.uid, series=[list(s1a)], series_uids=list(s1.series_uids))
    extra = s1b.add_series(2)
    for series_uid, sop in s1b.instances():
        upload(b.base_url, instance_bytes(s1b, series_uid, sop, seed=1 if sop == s1a[2] else 0))
    conflict_b = Patient("B222", "CONF^ALAN", "19810303", "M", N2)
    s6 = Study(conflict_b, "20200505")
    s6.add_series(1)
    reused_b = Patient("REUSED1", "SECOND^PERSON", "19550505", "M", N5)
    s7 = Study(reused_b, "20230101")
    s7.add_series(1)
    for study in (s6, s7):
        upload_study(b.base_url, study)
    # Trust C's CD export with a DICOMDIR.
    cd_patient = Patient("C100", "CD^CAROL", "19750707", "F", N6)
    s8 = Study(cd_patient, "20180101")
    s8.add_series(2)
    fs = FileSet()
    for series_uid, sop in s8.instances():
        fs.add(pydicom.dcmread(io.BytesIO(instance_bytes(s8, series_uid, sop))))
    cd = tmp_path / "cd"
    fs.write(cd)
    assert (cd / "DICOMDIR").is_file()

    cli = Cli(tmp_path / "var")
    for code in ("ZZA", "ZZB", "ZZC"):
        cli("trust", "add", code, "--name", f"Trust {code}")
    add_source(cli, "legacy-a", a, "ZZA", "--associations", "2")
    add_source(cli, "legacy-b", b, "ZZB")
    cli("migrate", "source", "add", "cd-c", "--folder", str(cd / "DICOMDIR"), "--trust", "ZZC")

    # Inventory first: every instance listed, exported as CSV and JSON.
    out = cli(
        "migrate", "inventory", "legacy-a",
        "--csv", str(tmp_path / "a.csv"), "--json", str(tmp_path / "a.json"),
    ).stdout  # fmt: skip
    assert "4 patients, 4 studies, 4 series, 7 instances" in out
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    assert sorted(r["sop_uid"] for r in rows) == sorted(
        sop for s in (s1, s2, s3, s4) for _, sop in s.instances()
    )
    assert {r["nhs_number"] for r in rows if r["patient_id"] == "A123456"} == {N1}
    assert len(json.loads((tmp_path / "a.json").read_text())) == 7
    assert "7 instances" in cli("migrate", "inventory", "legacy-b").stdout
    assert (
        "1 patients, 1 studies, 1 series, 2 instances" in cli("migrate", "inventory", "cd-c").stdout
    )

    # Dry run: what would move and what waits on identity, and nothing changes.
    plan = cli.plan("legacy-a")["plan"]
    assert plan["move_studies"] == 2 and plan["move_instances"] == 4
    waiting = {w["study_uid"]: w["reason"] for w in plan["waiting"]}
    assert set(waiting) == {s2.uid, s3.uid}
    assert "demographic-conflict" in waiting[s2.uid] and "19800202" in waiting[s2.uid]
    assert "invalid-nhs-number" in waiting[s3.uid]
    assert json.loads(cli("identity", "queue", "--json").stdout) == []
    assert json.loads(cli("stats", "--json").stdout)["instances"] == 0

    summary = cli.run_json("legacy-a")
    assert summary["transfer"]["states"] == {"stored": 4}

    # Source B's dry run: the shared study merges into the record it is filed under.
    plan_b = cli.plan("legacy-b")["plan"]
    assert plan_b["merge_studies"] == [
        {
            "study_uid": s1.uid,
            "with": "in the archive",
            "filed_under": "A123456/ZZA",
            "linked": True,
            "new_instances": 2,
        }
    ]
    assert [w["study_uid"] for w in plan_b["waiting"]] == [s6.uid]
    summary_b = cli.run_json("legacy-b")
    assert summary_b["transfer"]["states"] == {"stored": 3, "duplicate": 2, "quarantined": 1}
    assert cli.run_json("cd-c")["transfer"]["states"] == {"stored": 2}

    # Verification: exactly what was planted.
    code_a, rep_a = cli.verify("legacy-a")
    assert code_a == 1 and rep_a["counts"] == {"verified": 4, "waiting": 3}
    code_b, rep_b = cli.verify(
        "legacy-b", "--html", str(tmp_path / "b.html"), "--csv", str(tmp_path / "b.csv")
    )
    assert code_b == 1
    assert rep_b["counts"] == {"verified": 5, "quarantined": 1, "waiting": 1}
    by_sop = {i["sop_uid"]: i for i in rep_b["items"]}
    assert by_sop[s1a[2]]["verdict"] == "quarantined"
    assert by_sop[s6.series[0][0]]["verdict"] == "waiting"
    assert all(
        i["source_sha256"] == i["archive_sha256"]
        for i in rep_b["items"]
        if i["verdict"] == "verified"
    )
    assert [q["sop_uid"] for q in rep_b["quarantine"]] == [s1a[2]]
    assert s1a[2] in (tmp_path / "b.html").read_text()
    assert len(list(csv.DictReader((tmp_path / "b.csv").open()))) == 7
    code_c, rep_c = cli.verify("cd-c")
    assert code_c == 0 and rep_c["counts"] == {"verified": 2}

    # The archive: one shared study with the union, each record under its own trust.
    archive = build_archive(load_settings(environ={}, data_dir=tmp_path / "var"))
    try:
        with archive.index.read() as conn:
            placed = {
                r.sop_instance_uid: (r.study_uid, r.issuer, r.local_id)
                for r in conn.execute(
                    select(
                        t.instance.c.sop_instance_uid,
                        t.study.c.study_uid,
                        t.patient.c.issuer,
                        t.patient.c.local_id,
                    )
                    .join(t.series, t.instance.c.series_pk == t.series.c.pk)
                    .join(t.study, t.series.c.study_pk == t.study.c.pk)
                    .join(t.patient, t.study.c.patient_pk == t.patient.c.pk)
                )
            }
            audits = [
                json.loads(r.detail)
                for r in conn.execute(
                    select(t.audit_log.c.detail).where(t.audit_log.c.action == "import")
                )
            ]
        assert len(placed) == 9
        for sop in list(s1a) + extra:
            assert placed[sop] == (s1.uid, "ZZA", "A123456")
        assert placed[s4.series[0][0]][1:] == ("ZZA", "REUSED1")
        assert placed[s7.series[0][0]][1:] == ("ZZB", "REUSED1")
        assert not {sop for s in (s2, s3, s6) for _, sop in s.instances()} & placed.keys()
        stored_audits = {d["sop_instance_uid"] for d in audits if d.get("channel") == "migration"}
        assert placed.keys() <= stored_audits
        # Both versions of the collision are kept: the archive's (trust A's) and B's.
        # The quarantined copy lives in the blob store, not in a side folder.
        kept = rep_b["quarantine"][0]["path"]
        assert archive.store.exists(kept)
        with archive.store.open(kept) as fp:
            (tmp_path / "kept.dcm").write_bytes(fp.read())
        quarantined = tmp_path / "kept.dcm"
        original = instance_bytes(s1, s1.series_uids[0], s1a[2])
        other = instance_bytes(s1b, s1.series_uids[0], s1a[2], seed=1)
        (tmp_path / "orig.dcm").write_bytes(original)
        (tmp_path / "other.dcm").write_bytes(other)
        assert content_digest(quarantined) == content_digest(tmp_path / "other.dcm")
        assert by_sop[s1a[2]]["archive_sha256"] == content_digest(tmp_path / "orig.dcm")
    finally:
        archive.close()

    # Delta: a new study at source A moves alone on the next run.
    s9 = Study(shared, "20240101")
    s9.add_series(2)
    upload_study(a.base_url, s9)
    delta = cli.run_json("legacy-a")
    assert delta["inventory"]["new"] == 2
    assert delta["transfer"]["total"] == 2 and delta["transfer"]["states"] == {"stored": 2}
    assert json.loads(cli("stats", "--json").stdout)["instances"] == 11


def test_sigkill_mid_transfer_then_resume_loses_and_doubles_nothing(tmp_path: Path) -> None:
    require(shutil.which("Orthanc") is not None, "the `Orthanc` program")
    with orthanc() as o:
        studies = []
        for i in range(3):
            study = Study(Patient(f"K{i}", "KILL^TEST", "19700101", "F"), f"2020010{i + 1}")
            study.add_series(20)
            upload_study(o.base_url, study)
            studies.append(study)
        cli = Cli(tmp_path / "var")
        cli("trust", "add", "ZZA", "--name", "Trust A")
        # Throttled to 30 instances/s so the kill lands while series are in flight.
        add_source(cli, "legacy", o, "ZZA", "--rate", "30", "--associations", "2")
        proc = subprocess.Popen(
            [str(solent_program()), "migrate", "run", "legacy", "--json"],
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # unread here: a pipe could fill and block it
            text=True,
        )
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # one series done, others in flight
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert 0 < first["done"] < 60
        done_before = json.loads(cli("stats", "--json").stdout)["instances"]
        assert 0 < done_before < 60

        summary = cli.run_json("legacy")
        assert summary["transfer"]["total"] == 60 - summary["plan"]["already_done"]
        code, rep = cli.verify("legacy")
        assert code == 0 and rep["counts"] == {"verified": 60}
        assert json.loads(cli("stats", "--json").stdout)["instances"] == 60
        assert len({i["archive_sha256"] for i in rep["items"]}) == 60


def test_dicomweb_source_qido_and_wado_rs(tmp_path: Path) -> None:
    require(shutil.which("Orthanc") is not None, "the `Orthanc` program")
    with orthanc() as o:
        study = Study(Patient("W1", "WEB^WENDY", "19850505", "F", N1), "20210909")
        study.add_series(3)
        study.add_series(1)
        upload_study(o.base_url, study)
        cli = Cli(tmp_path / "var")
        cli("trust", "add", "ZZA", "--name", "Trust A")
        cli(
            "migrate", "source", "add", "web", "--dicomweb", o.dicomweb_url, "--trust", "ZZA",
        )  # fmt: skip
        out = cli("migrate", "inventory", "web", "--json", str(tmp_path / "inv.json")).stdout
        assert "1 patients, 1 studies, 2 series, 4 instances" in out
        rows = json.loads((tmp_path / "inv.json").read_text())
        assert {r["nhs_number"] for r in rows} == {N1}  # from series metadata
        assert cli.run_json("web")["transfer"]["states"] == {"stored": 4}
        # The rerun's progress is readable: httpx's per-request INFO lines used to bury it.
        rerun = cli("migrate", "run", "web").stderr
        assert "web: 0 of 0 instances handled" in rerun and "HTTP Request" not in rerun
        code, rep = cli.verify("web")
        assert code == 0 and rep["counts"] == {"verified": 4}
        expected = {
            sop: content_digest_of(instance_bytes(study, series, sop), tmp_path)
            for series, sop in study.instances()
        }
        assert {i["sop_uid"]: i["archive_sha256"] for i in rep["items"]} == expected


def content_digest_of(data: bytes, tmp: Path) -> str:
    path = tmp / "one.dcm"
    path.write_bytes(data)
    return content_digest(path)


def test_dimse_source_sends_compressed_instances_as_stored_and_a_study_under_two_patients_waits(
    tmp_path: Path,
) -> None:
    """C-GET used to offer each SOP Class in ONE presentation context listing every transfer
    syntax: Orthanc accepted one syntax per class, then decompressed (JPEG arrived as Explicit
    VR Little Endian, 10x the size, verified against itself) or refused (0xC000 for JPEG
    2000). And one Study UID under two patients made the inventory crash on a UNIQUE error."""
    require(shutil.which("Orthanc") is not None, "the `Orthanc` program")
    from pydicom.data import get_testdata_file

    originals = {}
    with orthanc() as o:
        for i, name in enumerate(("JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_RLE.dcm")):
            path = get_testdata_file(name)
            assert path is not None
            ds = pydicom.dcmread(path)
            ds.PatientID, ds.PatientName = f"C{i}", f"COMPRESSED^{i}"
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            upload(o.base_url, buf.getvalue())
            originals[str(ds.SOPInstanceUID)] = (str(ds.file_meta.TransferSyntaxUID), ds.PixelData)
        first = Study(Patient("T1", "TWO^PATIENTS", "19700101", "F"), "20200101")
        first.add_series(1)
        second = Study(
            Patient("T2", "OTHER^PERSON", "19800101", "M"), "20200101", uid=first.uid,
            series=[["2.25.4242424242"]], series_uids=list(first.series_uids),
        )  # fmt: skip
        for study in (first, second):
            upload_study(o.base_url, study)
        cli = Cli(tmp_path / "var")
        cli("trust", "add", "ZZA", "--name", "Trust A")
        add_source(cli, "legacy", o, "ZZA")
        assert "5 instances" in cli("migrate", "inventory", "legacy").stdout
        summary = cli.run_json("legacy")
        assert summary["transfer"]["states"] == {"stored": 3}
        held = {w["study_uid"]: w["reason"] for w in summary["plan"]["waiting"]}
        assert "several patient IDs" in held[first.uid] and "T1" in held[first.uid]
        code, rep = cli.verify("legacy")
        assert code == 1  # the held study is unresolved
        assert rep["counts"] == {"verified": 3, "waiting": 2}
        inventory = {r["sop_uid"]: r["patient_id"] for r in cli_inventory(cli, tmp_path)}
        assert inventory[first.series[0][0]] == "T1" and inventory["2.25.4242424242"] == "T2"
    archive = build_archive(load_settings(environ={}, data_dir=tmp_path / "var"))
    try:
        for sop, (syntax, pixels) in originals.items():
            found = archive.index.instance_digest(sop)
            assert found is not None
            with archive.store.open(found[1]) as fp:
                got = pydicom.dcmread(fp)
            assert str(got.file_meta.TransferSyntaxUID) == syntax
            assert got.PixelData == pixels
        assert archive.index.instance_digest(first.series[0][0]) is None
    finally:
        archive.close()


def cli_inventory(cli: Cli, tmp: Path) -> list[dict[str, Any]]:
    cli("migrate", "inventory", "legacy", "--json", str(tmp / "inv.json"))
    return json.loads((tmp / "inv.json").read_text())  # type: ignore[no-any-return]


def test_a_source_that_aborts_or_is_not_there_gets_an_error_saying_what_to_check(
    tmp_path: Path,
) -> None:
    """Orthanc aborts the C-FIND of a calling AE it does not know: pynetdicom then yields an
    empty status, which used to end the run in an AttributeError traceback. And nothing
    listening at the address used to be reported as a refused association."""
    require(shutil.which("Orthanc") is not None, "the `Orthanc` program")
    from bench.orthanc import free_port

    with orthanc() as o:
        cli = Cli(tmp_path / "var")
        cli("trust", "add", "ZZA", "--name", "Trust A")
        cli(
            "migrate", "source", "add", "stranger",
            "--dimse", f"{ORTHANC_AET}@127.0.0.1:{o.dicom_port}",
            "--trust", "ZZA", "--calling-ae", "STRANGER",
        )  # fmt: skip
        r = cli("migrate", "run", "stranger", ok=(1,))
        assert "STRANGER allowed to query" in r.stderr and "Traceback" not in r.stderr
    cli(
        "migrate", "source", "add", "gone",
        "--dimse", f"{ORTHANC_AET}@127.0.0.1:{free_port()}", "--trust", "ZZA",
    )  # fmt: skip
    r = cli("migrate", "run", "gone", ok=(1,))
    assert "cannot connect to 127.0.0.1" in r.stderr and "legacy PACS running" in r.stderr


def test_dicomweb_source_lists_a_study_under_two_patients_instead_of_giving_up(
    tmp_path: Path,
) -> None:
    """Orthanc's DICOMweb answers 404 to the series metadata of a study it files under two
    patients; that one answer used to end the whole inventory, so nothing moved."""
    require(shutil.which("Orthanc") is not None, "the `Orthanc` program")
    with orthanc() as o:
        first = Study(Patient("T1", "TWO^PATIENTS", "19700101", "F"), "20200101")
        first.add_series(1)
        second = Study(
            Patient("T2", "OTHER^PERSON", "19800101", "M"), "20200101", uid=first.uid,
            series=[["2.25.4343434343"]], series_uids=list(first.series_uids),
        )  # fmt: skip
        fine = Study(Patient("W1", "WEB^WENDY", "19850505", "F", N1), "20210909")
        fine.add_series(2)
        for study in (first, second, fine):
            upload_study(o.base_url, study)
        cli = Cli(tmp_path / "var")
        cli("trust", "add", "ZZA", "--name", "Trust A")
        cli("migrate", "source", "add", "web", "--dicomweb", o.dicomweb_url, "--trust", "ZZA")
        summary = cli.run_json("web")
        assert summary["transfer"]["states"] == {"stored": 2}
        held = {w["study_uid"]: w["reason"] for w in summary["plan"]["waiting"]}
        assert "several patient IDs" in held[first.uid]
        _code, rep = cli.verify("web")
        assert rep["counts"] == {"verified": 2, "waiting": 2}
        patients = {i["sop_uid"]: i["patient_id"] for i in rep["items"]}
        assert patients[first.series[0][0]] == "T1" and patients["2.25.4343434343"] == "T2"


@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_iso2022_names_orthanc_lists_garbled_arrive_as_the_files_spell_them(
    tmp_path: Path, kind: str
) -> None:
    """Orthanc answers C-FIND in Latin-1: a GB 2312 (ISO 2022 IR 58) name is listed as
    'Zhang^XiaoDong=^' and a Japanese IR 13 + IR 87 one as '^=;3ED^B@O:=$d$^$@^$?$m$&' (the
    JIS codes with their escapes dropped). The first kept its escape sequences in the header
    name taken to repair it, so no repair happened; the second was not recognised as a lossy
    rendering, so the record kept the ASCII garbage as the patient's name. Orthanc's DICOMweb
    lists the Japanese one with its katakana decoded and the rest as the same garbage."""
    require(shutil.which("Orthanc") is not None, "the `Orthanc` program")
    corpus = require_corpus()
    expected = {
        "GB2312Example": "Zhang^XiaoDong=\u5f20^\u5c0f\u4e1c",
        "H32EXAMPLE": "\uff94\uff8f\uff80\uff9e^\uff80\uff9b\uff73=\u5c71\u7530^\u592a\u90ce="
        "\u3084\u307e\u3060^\u305f\u308d\u3046",
        "I2EXAMPLE": "Hong^Gildong=\u6d2a^\u5409\u6d1e=\ud64d^\uae38\ub3d9",  # already fine
    }
    with orthanc() as o:
        for name in ("cs_gb2312_iso2022_ir58.dcm", "cs_japanese_ir13_ir87.dcm"):
            upload(o.base_url, (corpus / name).read_bytes())
        upload(o.base_url, (corpus / "cs_korean_iso2022_ir149.dcm").read_bytes())
        cli = Cli(tmp_path / "var")
        cli("trust", "add", "ZZA", "--name", "Trust A")
        if kind == "dimse":
            add_source(cli, "legacy", o, "ZZA")
        else:
            cli(
                "migrate", "source", "add", "legacy", "--dicomweb", o.dicomweb_url, "--trust", "ZZA"
            )
        cli("migrate", "inventory", "legacy", "--json", str(tmp_path / "inv.json"))
        listed = {r["patient_id"]: r["patient_name"] for r in json.loads(
            (tmp_path / "inv.json").read_text())}  # fmt: skip
        assert listed["H32EXAMPLE"].endswith("=;3ED^B@O:=$d$^$@^$?$m$&")  # what Orthanc says
        assert cli.run_json("legacy")["transfer"]["states"] == {"stored": 3}
        # A delta run re-applies the (changed) listing: the repaired names stay.
        cli("migrate", "run", "legacy")
        code, rep = cli.verify("legacy")
        assert code == 0 and rep["counts"] == {"verified": 3}

    archive = build_archive(load_settings(environ={}, data_dir=tmp_path / "var"))
    try:
        names = {}
        for pid in expected:
            resolved = archive.identity.resolve("ZZA", pid)
            assert resolved is not None
            record = archive.identity.record(resolved.patient_pk)
            assert record is not None
            names[pid] = record["record"]["name"]
        assert names == expected
    finally:
        archive.close()


def test_a_legacy_pacs_that_dies_mid_run_leaves_a_resumable_state_and_says_what_next(
    tmp_path: Path,
) -> None:
    """Orthanc killed while series are in flight: the run used to end with exit 1 and only
    a count of failed instances, nothing saying why or what to do. It now gives the reason
    and the next step; the rerun after Orthanc is back moves the rest, nothing twice."""
    require(shutil.which("Orthanc") is not None, "the `Orthanc` program")
    with orthanc() as o:
        study = Study(Patient("D1", "DIES^MIDRUN", "19700101", "F"), "20200101")
        for _ in range(3):
            study.add_series(10)
        upload_study(o.base_url, study)
        cli = Cli(tmp_path / "var")
        cli("trust", "add", "ZZA", "--name", "Trust A")
        add_source(cli, "legacy", o, "ZZA", "--rate", "20", "--associations", "1")
        proc = subprocess.Popen(
            [str(solent_program()), "migrate", "run", "legacy", "--json"],
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # one series stored, the next in flight
        assert o.proc is not None
        o.proc.kill()
        o.proc.wait(timeout=30)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1
        summary = json.loads(out.strip().splitlines()[-1])["summary"]["transfer"]
        assert summary["states"].get("failed", 0) > 0 and first["done"] >= 10
        assert "cannot connect to 127.0.0.1" in err
        assert "solent migrate run legacy" in err and "solent migrate verify legacy" in err
        assert "Traceback" not in err

        o.start()  # the legacy PACS is back, same data and ports
        again = cli.run_json("legacy")
        assert again["transfer"]["states"] == {"stored": summary["states"]["failed"]}
        code, rep = cli.verify("legacy")
        assert code == 0 and rep["counts"] == {"verified": 30}
        assert json.loads(cli("stats", "--json").stdout)["instances"] == 30


def test_one_patient_id_with_two_birth_dates_and_sexes_waits_instead_of_one_record(
    tmp_path: Path,
) -> None:
    """A legacy PACS with one Patient ID on two people (SMITH^ANN F 1970, JONES^BOB M 1965):
    the dry run said nothing, both studies moved under one record that showed JONES^BOB for
    SMITH^ANN's study in QIDO. They now wait with a reason naming both, queued for a person."""
    require(shutil.which("Orthanc") is not None, "the `Orthanc` program")
    with orthanc() as o:
        ann = Study(Patient("DUP1", "SMITH^ANN", "19700101", "F"), "20200101")
        ann.add_series(1)
        bob = Study(Patient("DUP1", "JONES^BOB", "19650505", "M"), "20210101")
        bob.add_series(1)
        fine = Study(Patient("OK1", "FINE^ONE", "19800101", "F"), "20220101")
        fine.add_series(1)
        for study in (ann, bob, fine):
            upload_study(o.base_url, study)
        cli = Cli(tmp_path / "var")
        cli("trust", "add", "ZZA", "--name", "Trust A")
        add_source(cli, "legacy", o, "ZZA")
        plan = cli.plan("legacy")["plan"]
        waiting = {w["study_uid"]: w["reason"] for w in plan["waiting"]}
        assert set(waiting) == {ann.uid, bob.uid}
        assert "19650505, 19700101" in waiting[ann.uid] and "F, M" in waiting[ann.uid]
        summary = cli.run_json("legacy")
        assert summary["transfer"]["states"] == {"stored": 1}
        queue = json.loads(cli("identity", "queue", "--json").stdout)
        assert [q["kind"] for q in queue] == ["migration-demographics-differ"]
        assert "SMITH^ANN" in queue[0]["detail"] and "JONES^BOB" in queue[0]["detail"]
        code, rep = cli.verify("legacy")
        assert code == 1 and rep["counts"] == {"verified": 1, "waiting": 2}
