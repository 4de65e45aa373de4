"""A node killed mid-transfer (SIGKILL, power) leaves partial spool files: C-STORE data sets
being received and STOW-RS parts. Nothing of them was acknowledged or indexed; the next start
removes them, so a node that keeps crashing does not fill its local disk (issue 16)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from solent.serve_process import serve_env, start_serve, stop_serve


def _file(path: Path, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 1024)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_a_restarted_node_removes_the_spool_files_of_its_killed_run(tmp_path: Path) -> None:
    data = tmp_path / "var"
    tmp = data / "tmp"
    stale = [_file(tmp / "dimse" / "tmpa1b2c3.dcm", 3600), _file(tmp / "stow-x9y8.dcm", 3600)]
    # Written a moment ago: may belong to another process on this data dir (`solent retrieve`).
    fresh = _file(tmp / "dimse" / "tmpfresh.dcm", 5)
    # Not a spool: migration's work area is left alone.
    other = _file(tmp / "migrate" / "state.json", 3600)
    proc, _ports = start_serve(serve_env(data))
    try:
        assert not any(p.exists() for p in stale)
        assert fresh.exists() and other.exists()
    finally:
        stop_serve(proc)
