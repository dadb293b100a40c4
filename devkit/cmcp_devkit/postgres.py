"""A real PostgreSQL server for tests and benchmarks: a private cluster on loopback, gone on stop.

The product stores spent permits (and, later, audit entries) in PostgreSQL when several replicas
on several nodes must share them; tests run the real server from Debian's package rather than a
stand-in. ``initdb`` refuses to run as root, so under root the cluster is created and served as
the ``postgres`` system user the package adds, in a directory that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cmcp_devkit.ports import free_port, wait_port
from cmcp_devkit.procs import Proc, start

SERVICE_USER = "postgres"
DATABASE_USER = "cmcp"


def bin_dir() -> Path:
    """Where ``initdb`` and ``postgres`` live: ``$PG_BIN``, the newest Debian cluster, else PATH."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if debian:
        return Path(debian[-1]).parent
    found = shutil.which("initdb")
    if found is None:
        raise FileNotFoundError("PostgreSQL server binaries not found: install the 'postgresql' package "
                                "(scripts/setup.sh does) or set PG_BIN")
    return Path(found).resolve().parent


def _service_user() -> str | None:
    """Who runs the server: us, or (as root, which PostgreSQL refuses) the package's system user."""
    if os.geteuid() != 0:
        return None
    pwd.getpwnam(SERVICE_USER)  # KeyError: the package's system user is missing
    return SERVICE_USER


@dataclass
class PostgresServer:
    """A running private cluster; ``dsn`` reaches its ``postgres`` database as a trusted user."""

    proc: Proc
    data_dir: Path
    port: int

    @property
    def dsn(self) -> str:
        return f"postgresql://{DATABASE_USER}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        self.proc.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_postgres(log_dir: Path) -> PostgresServer:
    """initdb (trust auth on loopback only) and start ``postgres`` on a free port; a failed start
    leaves no process and no data directory behind."""
    binaries, user = bin_dir(), _service_user()
    data_dir = Path(tempfile.mkdtemp(prefix="cmcp-pg-"))
    proc: Proc | None = None
    try:
        group = None
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(data_dir, entry.pw_uid, entry.pw_gid)
            group = entry.pw_gid
        subprocess.run(
            [str(binaries / "initdb"), "-D", str(data_dir / "data"), "-U", DATABASE_USER,
             "--auth=trust", "--no-sync", "-E", "UTF8"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, user=user, group=group,
        )
        port = free_port()
        proc = start(
            "postgres",
            [str(binaries / "postgres"), "-D", str(data_dir / "data"), "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={data_dir}",
             "-c", "fsync=off"],  # test clusters only: durability is PostgreSQL's, not under test here
            log_dir,
            port=port,
            user=user,
        )
        proc.stop_signal, proc.stop_timeout = signal.SIGINT, 10.0  # "fast" shutdown, clients or not
        wait_port(port, timeout=60.0, proc=proc.popen)
        _wait_accepting(binaries, port, proc)
    except BaseException:
        if proc is not None:
            proc.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    return PostgresServer(proc=proc, data_dir=data_dir, port=port)


def _wait_accepting(binaries: Path, port: int, proc: Proc, timeout: float = 60.0) -> None:
    """The port opens before recovery ends; ``pg_isready`` says when connections are accepted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"postgres exited before accepting connections:\n{proc.output()}")
        check = [str(binaries / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
        if subprocess.run(check, check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise TimeoutError(f"postgres on port {port} did not accept connections within {timeout:.0f}s")


@contextlib.contextmanager
def postgres(log_dir: Path) -> Iterator[PostgresServer]:
    server = start_postgres(log_dir)
    try:
        yield server
    finally:
        server.stop()
