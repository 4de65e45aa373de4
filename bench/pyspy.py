"""Sample `solent serve` with py-spy while one benchmark phase runs, and summarise the stacks.

`python -m bench compare --profile DIR` records each Solent measurement into DIR/<phase>.txt
(py-spy's collapsed "raw" format, loadable in speedscope or flamegraph.pl) and writes
DIR/<phase>.top.txt: the functions with the most samples, by self time and including callees.
Sampling perturbs the figures a little (--nonblocking keeps it to the sampler's own CPU), so
profile runs are for finding where time goes, not for the table.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path


class Recording:
    """One py-spy process attached to a server (and its child processes)."""

    def __init__(self, pid: int, output: Path, rate: int = 250) -> None:
        if shutil.which("py-spy") is None and not (Path(_venv_bin()) / "py-spy").exists():
            raise RuntimeError("py-spy is not installed: pip install -e '.[dev]'")
        exe = shutil.which("py-spy") or str(Path(_venv_bin()) / "py-spy")
        self.output = output
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--subprocesses",
                "--nonblocking",
                "--format",
                "raw",
                "--rate",
                str(rate),
                "--output",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> Path:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.output


def _venv_bin() -> str:
    import sys

    return str(Path(sys.executable).parent)


def _frame_name(frame: str) -> str:
    """'handle (solent/x.py:12)' -> 'handle (solent/x.py)': one entry per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


def summarise(raw: Path, top: int = 30) -> str:
    """Self and inclusive sample counts per function from a collapsed-stack file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    if not raw.exists():
        return f"{raw.name}: no samples (py-spy wrote nothing)\n"
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_txt = line.rpartition(" ")
        if not stack or not count_txt.isdigit():
            continue
        count = int(count_txt)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return f"{raw.name}: no samples\n"
    lines = [f"{raw.name}: {total} samples", "", "self time (where the CPU was):"]
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in own.most_common(top)]
    lines += ["", "including callees:"]
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"
