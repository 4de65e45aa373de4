"""What the kernel says about this process's TCP connections (Linux `ss`), for the tests of
connections that must stay alive through NATs and firewalls."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest


def keepalive_seconds(local_port: int) -> float | None:
    """Seconds until the kernel's next keepalive probe on the established connection from
    ``local_port``; None when it has no keepalive timer. Skips without `ss` (iproute2)."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("needs `ss` (iproute2) to read a socket's keepalive timer")
    out = subprocess.run(
        [ss, "-tno", "state", "established", f"( sport = :{local_port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"timer:\(keepalive,(?:(\d+)min)?(?:(\d+)sec)?(?:(\d+)ms)?", out)
    if found is None:
        return None
    minutes, seconds, ms = (int(g) if g else 0 for g in found.groups())
    return minutes * 60 + seconds + ms / 1000
