"""Start and stop a real Orthanc for side-by-side benchmarks.

Orthanc runs as its Debian package installs it: SQLite index and files on disk by default
(`SyncStorageArea` on, so stored instances are fsynced like Solent's), the DICOMweb plugin at
``/dicom-web/``, or its PostgreSQL index plugin. It binds loopback ports picked free at start,
keeps everything in a temp dir, and gets ``TCP_NODELAY=1`` so DCMTK inside it disables Nagle
on DIMSE sockets (otherwise every DIMSE round trip costs ~90 ms and we would measure Nagle).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ORTHANC_AET = "ORTHANC"


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS may reuse it, rarely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _package_file(package: str, suffix: str) -> Path:
    """A plugin .so from `dpkg -L package` (its path differs between Debian releases)."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", package], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(
            f"Debian package {package} is not installed: apt-get install {package}"
        ) from exc
    for line in listing.splitlines():
        if line.endswith(suffix) and Path(line).is_file():
            return Path(line)
    raise RuntimeError(f"no {suffix} in package {package}")


def dicomweb_plugin() -> Path:
    return _package_file("orthanc-dicomweb", "libOrthancDicomWeb.so")


def postgresql_index_plugin() -> Path:
    return _package_file("orthanc-postgresql", "libOrthancPostgreSQLIndex.so")


@dataclass(frozen=True)
class PostgresTarget:
    host: str
    port: int
    database: str
    user: str
    password: str = ""


@dataclass
class OrthancServer:
    """One Orthanc process; use as a context manager or call start()/stop()."""

    client_aet: str = "BENCH"
    client_port: int = 11113
    postgres: PostgresTarget | None = None
    sync_storage: bool = True
    workdir: Path | None = None
    http_port: int = 0
    dicom_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _own_dir: bool = field(default=False, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return self.base_url + "/dicom-web"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def storage_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "storage"

    def config(self) -> dict[str, Any]:
        assert self.workdir is not None
        plugins = [str(dicomweb_plugin())]
        cfg: dict[str, Any] = {
            "Name": "solent-bench-orthanc",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "SyncStorageArea": self.sync_storage,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "HttpDescribeErrors": True,
            "KeepAlive": True,
            "TcpNoDelay": True,
            "DicomServerEnabled": True,
            "DicomAet": ORTHANC_AET,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "UnknownSopClassAccepted": True,
            "DicomModalities": {
                "bench": {
                    "AET": self.client_aet,
                    "Host": "127.0.0.1",
                    "Port": self.client_port,
                    "AllowEcho": True,
                    "AllowFind": True,
                    "AllowGet": True,
                    "AllowMove": True,
                    "AllowStore": True,
                }
            },
            "SaveJobs": False,
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
            "Plugins": plugins,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }
        if self.postgres is not None:
            plugins.append(str(postgresql_index_plugin()))
            cfg["PostgreSQL"] = {
                "EnableIndex": True,
                "EnableStorage": False,
                "Host": self.postgres.host,
                "Port": self.postgres.port,
                "Database": self.postgres.database,
                "Username": self.postgres.user,
                "Password": self.postgres.password,
                "Lock": False,
            }
        return cfg

    def start(self, timeout: float = 60) -> OrthancServer:
        if shutil.which("Orthanc") is None:
            raise RuntimeError("Orthanc is not installed: apt-get install orthanc orthanc-dicomweb")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="bench-orthanc-"))
            self._own_dir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()
        cfg_path = self.workdir / "orthanc.json"
        cfg_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        env = {**os.environ, "TCP_NODELAY": "1"}
        log = (self.workdir / "orthanc.log").open("ab")
        self.proc = subprocess.Popen(
            ["Orthanc", str(cfg_path)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start; see {self.workdir / 'orthanc.log'}")
            try:
                with urllib.request.urlopen(self.base_url + "/system", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout}s; see orthanc.log")

    def restart(self, *, sync_storage: bool | None = None) -> OrthancServer:
        """Stop and start on the same data and ports (e.g. after a bulk load without fsync)."""
        self.stop(remove=False)
        if sync_storage is not None:
            self.sync_storage = sync_storage
        return self.start()

    @contextmanager
    def bulk_load(self) -> Iterator[OrthancServer]:
        """Orthanc restarted without per-instance durability while an untimed fill runs, and
        restarted durable again afterwards (same data, same ports, a new pid).

        Growing the index to 100k studies is set-up, not a measurement: Orthanc stores each
        instance in its own transaction, and with fsync on every file (SQLite) or every commit
        (PostgreSQL, ~2x slower than without) the fill alone would take most of the run.
        Nothing is measured while this is active; queries are measured after it.
        """
        self._set_synchronous_commit(False)
        try:
            self.restart(sync_storage=False)
            yield self
        finally:
            self._set_synchronous_commit(True)
            self.restart(sync_storage=True)

    def _set_synchronous_commit(self, on: bool) -> None:
        """The PostgreSQL setting for Orthanc's own database; its next connections use it."""
        pg = self.postgres
        if pg is None:
            return
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            host=pg.host,
            port=pg.port,
            dbname=pg.database,
            user=pg.user,
            password=pg.password or None,
            autocommit=True,
        ) as conn:
            name = sql.Identifier(pg.database)
            if on:
                conn.execute(sql.SQL("ALTER DATABASE {} RESET synchronous_commit").format(name))
            else:
                conn.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(name))

    def stop(self, *, remove: bool = True) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if remove and self._own_dir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def statistics(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.base_url + "/statistics", timeout=30) as r:
            result: dict[str, Any] = json.loads(r.read())
            return result

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
