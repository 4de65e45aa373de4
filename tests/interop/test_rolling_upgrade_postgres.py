"""Rolling upgrade (issue 16): the previous release and this one side by side on one database.

The previous release is taken from git: the parent of the newest commit that added a schema
revision, provided its revisions are a prefix of this release's chain (older commits are
tried otherwise). Its `src/` is extracted into a temporary directory and run with this venv
(PYTHONPATH first). Then, as an operator would:

1. the old release creates the schema and serves (C-STORE, C-FIND);
2. `solent db upgrade` of the new release migrates while the old node keeps serving;
3. the old node still stores and finds on the migrated schema;
4. a new node starts beside it; each finds what the other stored;
5. the old node stops (the last one upgraded) and the new one carries on.

This is the rule docs/operations.md states: migrations only expand (add tables, nullable
columns, indexes built concurrently) in the release that needs them; a contraction waits for
the release after, when no node of the old code is left.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

import psycopg
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from tests.conftest import SOLENT, RunningServer, start_server
from tests.contract.synthetic import new_uid, write_instance

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = "src/solent/index/migrations/versions"
MODALITY = "UPGRADEMOD"
REV = re.compile(r"^revision\s*=\s*['\"](\w+)['\"]", re.M)
DOWN = re.compile(r"^down_revision\s*=\s*['\"]?(\w+)['\"]?", re.M)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout


def chain_of(sources: list[str]) -> dict[str, str]:
    """revision -> down_revision ("None" for the first) of these migration scripts."""
    out = {}
    for text in sources:
        rev, down = REV.search(text), DOWN.search(text)
        if rev and down:
            out[rev.group(1)] = down.group(1)
    return out


def head(chain: dict[str, str]) -> str:
    (top,) = set(chain) - set(chain.values())
    return top


def previous_release() -> tuple[str, str, str]:
    """(commit, its schema head, this release's head) of the release before this one."""
    try:
        git("rev-parse", "--is-inside-work-tree")
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip("not a git checkout: the previous release's source comes from git history")
    current = chain_of([p.read_text() for p in (ROOT / VERSIONS).glob("0*.py")])
    new_head = head(current)
    for commit in git("log", "--format=%H", "--", VERSIONS).split():
        try:
            parent = git("rev-parse", f"{commit}^").strip()
        except subprocess.CalledProcessError:
            continue  # the first commit
        names = git("ls-tree", "--name-only", parent, VERSIONS + "/").split()
        texts = [git("show", f"{parent}:{n}") for n in names if "/0" in n]
        old = chain_of(texts)
        if not old or len(old) != sum(1 for t in texts if REV.search(t)):
            continue  # none, or a merge's inside with two scripts of one revision: no release
        old_head = head(old)
        if old_head != new_head and all(current.get(r) == d for r, d in old.items()):
            return parent, old_head, new_head
    pytest.skip("no earlier release with a prefix of this schema chain in the git history")


def extract(commit: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "src"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def schema_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert row is not None
    return str(row[0])


def store(port: int, path: Path) -> None:
    ae = AE(ae_title=MODALITY)
    ae.requested_contexts = StoragePresentationContexts[:100]
    assoc = ae.associate("127.0.0.1", port, ae_title="SOLENT")
    assert assoc.is_established
    status = assoc.send_c_store(dcmread(path))
    assoc.release()
    assert status and status.Status == 0, status


def studies(port: int, patient_id: str) -> set[str]:
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="SOLENT")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.StudyInstanceUID = ""
    found: set[str] = set()
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        if status and status.Status in (0xFF00, 0xFF01) and identifier is not None:
            found.add(str(identifier.StudyInstanceUID))
    assoc.release()
    return found


def test_old_and_new_release_serve_side_by_side_during_the_upgrade(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    commit, old_head, new_head = previous_release()
    old_src = extract(commit, tmp_path / "old")
    shared = {
        "SOLENT_DATABASE_URL": fresh_postgres_url,
        "SOLENT_STORAGE_URL": f"file://{tmp_path / 'blobs'}",
        "SOLENT_AUDIT_KEY": "rolling-upgrade test audit key shared by the nodes",
        "SOLENT_DICOM_WORKERS": "1",
    }
    old_env = {**shared, "PYTHONPATH": str(old_src)}

    def cli(env: dict[str, str], data: Path, *args: str) -> None:
        import os

        base = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
        done = subprocess.run(
            [str(SOLENT), *args],
            env={**base, **env, "SOLENT_DATA_DIR": str(data)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]

    # 1. The previous release makes the schema (to its own head) and is configured by its CLI.
    cli(old_env, tmp_path / "admin-old", "db", "upgrade")
    assert schema_version(fresh_postgres_url) == old_head
    cli(old_env, tmp_path / "admin-old", "trust", "add", "ZZA", "--name", "Trust A")
    cli(
        old_env, tmp_path / "admin-old", "ae", "add", MODALITY, "--host", "127.0.0.1",
        "--port", "104", "--trust", "ZZA", "--allow", "store,query",
    )  # fmt: skip
    files = [
        write_instance(
            tmp_path / "in" / f"{i}.dcm", patient_id="ROLL1", study_uid=new_uid(), seed=i
        )
        for i in range(4)
    ]
    uids = [w.study_uid for w in files]

    old: RunningServer | None = start_server(tmp_path / "old-node", extra_env=old_env)
    new: RunningServer | None = None
    try:
        assert old is not None
        store(old.ports["dicom"], files[0].path)
        assert studies(old.ports["dicom"], "ROLL1") == {uids[0]}

        # 2. The new release migrates the database while the old node serves.
        cli(shared, tmp_path / "admin-new", "db", "upgrade")
        assert schema_version(fresh_postgres_url) == new_head

        # 3. The old node goes on storing and finding on the migrated schema.
        store(old.ports["dicom"], files[1].path)
        assert studies(old.ports["dicom"], "ROLL1") == set(uids[:2])

        # 4. A new node beside it: each sees what the other stored.
        new = start_server(tmp_path / "new-node", extra_env=shared)
        store(new.ports["dicom"], files[2].path)
        assert studies(old.ports["dicom"], "ROLL1") == set(uids[:3])
        store(old.ports["dicom"], files[3].path)
        assert studies(new.ports["dicom"], "ROLL1") == set(uids)

        # 5. The old node is the last one upgraded: it stops; the new one carries on.
        assert old.stop() == 0
        old = None
        assert studies(new.ports["dicom"], "ROLL1") == set(uids)
        assert schema_version(fresh_postgres_url) == new_head
    finally:
        for node in (old, new):
            if node is not None:
                node.stop()
