"""A private PostgreSQL cluster for tests and benchmarks: initdb + pg_ctl in a temp dir.

Tests run as root and PostgreSQL refuses to run as root, so the cluster belongs to the
``postgres`` system user that Debian's package creates (or to the current user when not
root). It listens only on a unix socket in its own folder (no TCP port at all) and uses
the C collation, so text compares byte-wise as in SQLite.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

_PORT = 5432   # only names the socket file inside the private folder


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's server programs are not installed (scripts/bootstrap.sh installs them)."""


def server_binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise PostgresUnavailable(f"{name} not found: install Debian's postgresql package "
                                  "(scripts/bootstrap.sh does)")
    return path


@dataclass
class PrivateCluster:
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="medfed-pg-")))
    _databases: int = 0
    _running: bool = False

    @property
    def socket_dir(self) -> Path:
        return self.base / "sock"

    def _as_owner(self, *args: str) -> list[str]:
        if os.geteuid() != 0:
            return list(args)
        return ["runuser", "-u", "postgres", "--", *args]

    def start(self) -> "PrivateCluster":
        data = self.base / "data"
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.base, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        subprocess.run(self._as_owner(server_binary("initdb"), "-D", str(data), "-A", "trust",
                                      "-U", "medfed", "-E", "UTF8", "--locale=C", "-N"),
                       check=True, capture_output=True, timeout=120)
        options = (f"-k {self.socket_dir} -c listen_addresses='' -p {_PORT} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        subprocess.run(self._as_owner(server_binary("pg_ctl"), "-D", str(data), "-o", options,
                                      "-l", str(self.base / "server.log"), "-w", "-t", "60",
                                      "start"), check=True, capture_output=True, timeout=90)
        self._running = True
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://medfed@/{database}?host={self.socket_dir}&port={_PORT}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        self._databases += 1
        name = f"medfed_{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self._running:
            subprocess.run(self._as_owner(server_binary("pg_ctl"), "-D", str(self.base / "data"),
                                          "-m", "fast", "-w", "stop"),
                           capture_output=True, timeout=60)
            self._running = False
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "PrivateCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
