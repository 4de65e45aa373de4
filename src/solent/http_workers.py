"""HTTP worker processes: more processes answering on the one HTTP port (issue 16).

A node answers QIDO-RS, WADO-RS and the viewer in Python, so one process uses one CPU however
many requests it serves. With ``SOLENT_HTTP_WORKERS`` > 1 on PostgreSQL, `solent serve` starts
that many - 1 processes (``python -m solent.http_workers``) that inherit its listening socket
and run the same HTTP app on their own Archive; connections are shared out among them by
solent.http_accept (a load board on a memfd, passed like the socket). They hold nothing that
must survive (principle 7): their look-up caches drop on the access broadcast (PostgreSQL
NOTIFY) exactly as other nodes' do, and MDT rooms already cross processes through the shared
broker. DIMSE, HL7 and background jobs stay in the parent.

Each worker reads the settings and the socket's file descriptor as one JSON line on stdin,
answers ``READY <port>`` once it listens, and stops on SIGTERM or when stdin closes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading

from solent.http_accept import LoadBoard
from solent.protocols.dimse.workers import READY, DimseWorkers, settings_payload, watch_parent
from solent.settings import Settings

log = logging.getLogger(__name__)


class HttpWorkers(DimseWorkers):
    """The extra HTTP processes of one `solent serve` (start/stop as the DIMSE workers)."""

    module = "solent.http_workers"
    what = "HTTP"

    def __init__(self, settings: Settings, sock: socket.socket, count: int) -> None:
        super().__init__(settings, int(sock.getsockname()[1]), count, sock)
        self.board = LoadBoard.create(count + 1)  # slot 0: the parent (solent.http_accept)
        self.pass_fds = (*self.pass_fds, self.board.fd)

    def payload_of(self, index: int) -> str:
        data = json.loads(settings_payload(self.settings, self.port))
        # Only the parent listens for DIMSE/HL7 and runs jobs; ports of 0 would bind new ones.
        data.update(dicom_workers=1, jobs_worker=False, http_port=self.port)
        # Slot 0 of the load board is the parent's; worker i publishes in slot i + 1.
        board = {"fd": self.board.fd, "slots": self.board.slots, "slot": index + 1}
        return json.dumps({"settings": data, "fd": self.fd, "board": board}, default=str)


def main() -> int:
    message = json.loads(sys.stdin.readline())
    settings = Settings(**message["settings"])
    from solent import logs

    logs.configure(settings.log_format, settings.log_level, settings.log_patient_data)
    from solent.app import build_archive
    from solent.serve import DrainingServer, http_config, https_files
    from solent.services.broadcast import ACCESS_CHANNEL
    from solent.ttl_cache import invalidate_all

    sock = socket.socket(fileno=int(message["fd"]))
    archive = build_archive(settings, migrate=False)
    archive.services.broadcast.subscribe(ACCESS_CHANNEL, lambda _note: invalidate_all())
    tls_cert, tls_key = https_files(archive)
    server = DrainingServer(http_config(archive, tls_cert, tls_key), archive)
    board = message["board"]
    server.board = LoadBoard(int(board["fd"]), int(board["slots"]), int(board["slot"]))
    stop = threading.Event()

    def on_stop() -> None:
        stop.wait()
        archive.services.health.begin_shutdown()
        server.should_exit = True

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=on_stop, daemon=True).start()
    threading.Thread(target=watch_parent, args=(sys.stdin, stop), daemon=True).start()
    out = sys.stdout
    out.write(f"{READY} {sock.getsockname()[1]}\n")
    out.flush()
    os.dup2(sys.stderr.fileno(), out.fileno())  # nothing else may block on that pipe
    from solent import gc_tuning

    gc_tuning.settle()
    try:
        server.run(sockets=[sock])
    finally:
        archive.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
