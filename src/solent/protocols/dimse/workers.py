"""DIMSE worker processes: more receivers on the one DICOM port, so ingest uses every CPU.

pynetdicom receives and Solent parses in Python, so one process is bound to one CPU however
many associations it serves. `solent serve` binds the plain DICOM port and starts
``SOLENT_DICOM_WORKERS - 1`` processes (``python -m solent.protocols.dimse.workers``) that run
only the DIMSE listener, against the same index and blob store. On the fast engine they inherit
the parent's listening socket and each blocks in accept(): the kernel hands each association
to the process that has waited longest, so associations go round the processes. On the
pynetdicom engine each binds the port itself (SO_REUSEPORT; the kernel hashes connections).
Ingest's write gate (a lock file for SQLite, row locks on PostgreSQL) keeps index transactions
and the audit chain serial.

Each worker reads the settings (and the inherited socket's descriptor) as one JSON line on
stdin, answers one ``READY <port>`` line on stdout, and stops on SIGTERM or when stdin closes
(its parent is gone).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Any

from pydantic import SecretStr

from solent.settings import Settings

log = logging.getLogger(__name__)

READY = "READY"
START_TIMEOUT = 120.0


def settings_payload(settings: Settings, port: int) -> str:
    """The parent's settings for a worker, secrets included, bound to the chosen port."""
    data: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        data[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
    data.update(dicom_port=port, dicom_tls_port=-1)  # the TLS port stays in the parent
    return json.dumps(data, default=str)


class DimseWorkers:
    """The extra receiving processes of one `solent serve`."""

    #: What each worker runs (``python -m``); the HTTP workers (solent.http_workers) reuse this
    #: class with their own module, payload and the inherited listening socket.
    module = "solent.protocols.dimse.workers"
    what = "DIMSE"

    def __init__(
        self, settings: Settings, port: int, count: int, sock: socket.socket | None = None
    ) -> None:
        self.settings = settings
        self.port = port
        self.count = count
        self.procs: list[subprocess.Popen[str]] = []
        #: The parent's listening socket, inherited by every worker (None: they bind the
        #: port themselves with SO_REUSEPORT, as the pynetdicom engine does).
        self.fd = sock.fileno() if sock is not None else None
        self.pass_fds: tuple[int, ...] = () if self.fd is None else (self.fd,)

    def payload_of(self, index: int) -> str:
        """The JSON line worker ``index`` reads on stdin (the same for every DIMSE worker)."""
        return json.dumps(
            {"settings": json.loads(settings_payload(self.settings, self.port)), "fd": self.fd}
        )

    def start(self) -> None:
        """Start every worker, then wait until each listens (or raise and stop them all)."""
        try:
            for index in range(self.count):
                proc = subprocess.Popen(
                    [sys.executable, "-m", self.module],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    close_fds=True,
                    pass_fds=self.pass_fds,
                )
                assert proc.stdin is not None
                proc.stdin.write(self.payload_of(index) + "\n")
                proc.stdin.flush()  # stdin stays open: its EOF tells the worker we are gone
                self.procs.append(proc)
            for proc in self.procs:
                self._await_ready(proc)
        except BaseException:
            self.stop()
            raise

    def _await_ready(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(START_TIMEOUT)
        line = box[0].strip() if box else ""
        if line != f"{READY} {self.port}":
            from solent.errors import ConfigurationError

            raise ConfigurationError(
                f"a {self.what} worker did not start (said {line!r}); see its log above"
            )

    def signal(self, sig: int) -> None:
        """Pass a signal on to every running worker (a drain starts on all at once)."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every worker, wait for all, kill what is left."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s worker %s did not stop; killing it", self.what, proc.pid)
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self.procs.clear()


def start_workers(
    settings: Settings, port: int, sock: socket.socket | None = None
) -> DimseWorkers | None:
    """Start the extra DIMSE processes ``settings`` asks for (None when there are none);
    ``sock``: the listening socket they share (the fast engine's), else they bind the port."""
    count = _processes(settings) - 1
    if count <= 0:
        return None
    workers = DimseWorkers(settings, port, count, sock)
    workers.start()
    log.info("DIMSE workers started", extra={"workers": count, "port": port})
    return workers


def _processes(settings: Settings) -> int:
    from solent.protocols.dimse.net import dicom_processes

    return dicom_processes(settings.dicom_workers)


def watch_parent(stdin: IO[str], stop: threading.Event) -> None:
    """Stop when the parent closes our stdin (it stopped, or died without a SIGTERM)."""
    with contextlib.suppress(OSError, ValueError):
        stdin.read()
    stop.set()


def main() -> int:
    message = json.loads(sys.stdin.readline())
    settings = Settings(**message["settings"])
    from solent import logs

    logs.configure(settings.log_format, settings.log_level, settings.log_patient_data)
    from solent.app import build_archive
    from solent.protocols.dimse.listener import DimseListener

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    archive = build_archive(settings, migrate=False)
    fd = message.get("fd")
    listener = DimseListener(archive.services, socket.socket(fileno=fd) if fd is not None else None)
    archive.listeners = [listener]
    try:
        port = listener.start()
        out = sys.stdout
        out.write(f"{READY} {port}\n")
        out.flush()
        os.dup2(sys.stderr.fileno(), out.fileno())  # nothing else may block on that pipe
        threading.Thread(target=watch_parent, args=(sys.stdin, stop), daemon=True).start()
        from solent import gc_tuning

        gc_tuning.settle()
        while not stop.wait(1.0):
            pass
    finally:
        archive.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
