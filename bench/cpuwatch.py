"""How much CPU other processes used while a phase ran.

A 2-core shared machine is noisy: a figure taken while someone's test suite ran means little.
We read the machine's busy time from /proc/stat and subtract what the benchmark itself used
(this process and its reaped clients, plus each server's process tree), so each phase can say
"other processes used X% of the machine meanwhile".
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def _machine_busy() -> float:
    """Seconds of non-idle CPU time summed over every core since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    # user nice system idle iowait irq softirq steal guest guest_nice
    busy = values[0] + values[1] + values[2] + values[5] + values[6] + values[7]
    return busy / TICK


def _proc_times(pid: int) -> tuple[float, int]:
    """(utime+stime+cutime+cstime in s, ppid) of one process; (0, -1) if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, -1
    rest = stat[stat.rfind(")") + 2 :].split()
    # after the comm: state ppid ... field 14-17 of stat are rest[11..14]
    ppid = int(rest[1])
    return sum(int(v) for v in rest[11:15]) / TICK, ppid


def _tree_times(roots: set[int]) -> float:
    """CPU seconds of the processes in ``roots`` and all their live descendants."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            pid = int(entry)
            t, ppid = _proc_times(pid)
            times[pid] = t
            children.setdefault(ppid, []).append(pid)
    total = 0.0
    stack = list(roots)
    seen: set[int] = set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += times.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return total


@dataclass
class CpuSample:
    wall: float
    machine_busy: float
    ours: float


@dataclass(frozen=True)
class CpuUse:
    seconds: float
    machine_busy_pct: float  # of all cores
    ours_pct: float  # the bench, its clients and both servers
    others_pct: float  # everything else on the machine

    def as_json(self) -> dict[str, float]:
        return {
            "seconds": round(self.seconds, 2),
            "machine_busy_pct": round(self.machine_busy_pct, 1),
            "bench_and_servers_pct": round(self.ours_pct, 1),
            "other_processes_pct": round(self.others_pct, 1),
        }


class CpuWatch:
    """Take a sample before and after a phase; `delta` says who used the CPU meanwhile."""

    def __init__(self, server_pids: set[int] | None = None) -> None:
        self.server_pids = server_pids or set()

    def sample(self) -> CpuSample:
        ours = _tree_times({os.getpid(), *self.server_pids})
        return CpuSample(time.perf_counter(), _machine_busy(), ours)

    @staticmethod
    def delta(a: CpuSample, b: CpuSample) -> CpuUse:
        wall = max(b.wall - a.wall, 1e-9)
        capacity = wall * CORES
        busy = max(0.0, b.machine_busy - a.machine_busy)
        ours = max(0.0, b.ours - a.ours)
        others = max(0.0, busy - ours)
        return CpuUse(wall, 100 * busy / capacity, 100 * ours / capacity, 100 * others / capacity)


def others_now(seconds: float = 1.0) -> float:
    """Percent of the machine other processes use right now (for a start-of-run warning)."""
    watch = CpuWatch()
    a = watch.sample()
    time.sleep(seconds)
    return CpuWatch.delta(a, watch.sample()).others_pct
