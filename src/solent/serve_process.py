"""Run `solent serve` as a child process and wait until it is ready.

Tests and benchmarks need a real server on free loopback ports; `solent serve` binds port 0 when
asked and prints one machine-readable line, ``SOLENT_READY {"http": ..., "dicom": ...}``, once
every listener accepts connections. This module is the one place that starts such a child,
reads that line and stops it, so the test fixtures and the benchmark harness cannot drift apart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

READY_PREFIX = "SOLENT_READY "


class ServeStartError(RuntimeError):
    """`solent serve` exited or stayed silent before its ready line; carries its last output."""


def solent_program() -> Path:
    """The `solent` console script of the running interpreter's environment."""
    return Path(sys.executable).parent / "solent"


def serve_env(data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any SOLENT_* setting, plus a data dir, every port 0
    (the OS picks free ones) and loopback only; ``extra`` comes last and wins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    env.update(
        SOLENT_DATA_DIR=str(data_dir),
        SOLENT_HTTP_PORT="0",
        SOLENT_DICOM_PORT="0",
        SOLENT_HL7_PORT="0",
        SOLENT_BIND_ADDRESS="127.0.0.1",
    )
    env.update(extra or {})
    return env


def start_serve(
    env: Mapping[str, str], timeout: float = 60, log: IO[str] | None = None
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start `solent serve` with ``env``; return the process and the ports of its ready line.

    After the ready line a daemon thread keeps reading the server's output (into ``log`` when
    given) so the server never blocks on a full pipe. Raises `ServeStartError` otherwise.
    """
    proc = subprocess.Popen(
        [str(solent_program()), "serve"],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = proc.stdout
    assert out is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = out.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(READY_PREFIX):
            ports: dict[str, Any] = json.loads(line[len(READY_PREFIX) :])
            threading.Thread(target=_drain, args=(out, log), daemon=True).start()
            return proc, ports
    proc.kill()
    proc.wait()
    raise ServeStartError("solent serve did not start:\n" + "".join(seen[-40:]))


def _drain(out: IO[str], log: IO[str] | None) -> None:
    for line in out:
        if log is not None:
            with suppress(ValueError):  # the log was closed: the owner stopped listening
                log.write(line)


def stop_serve(proc: subprocess.Popen[str], timeout: float = 30) -> int:
    """SIGTERM (a clean shutdown), SIGKILL after ``timeout`` seconds; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
