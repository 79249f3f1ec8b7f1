"""One prepared empty metadata database, copied into each simulated node's folder.

Creating the schema (tables, indexes, migrations) costs a node ~40 ms of start-up and
is the same for every node. The simulator creates it once per run with the node's own
code (``SqliteBackend.connect_writer``: schema + every migration), then gives each new
node a byte copy of that file (0600) before the node opens it. Every node still has its
own real SQLite file; opening an existing current schema is what a restarted node does.
The patient salt is not in the template: each node adds its own at open.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from node.store.sqlite_backend import SqliteBackend


class DbTemplate:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "empty-metadata.sqlite"
        self._ready = False

    def _prepare(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        conn = SqliteBackend(self.path, durability="normal", readers=0,
                             cache_mb=1).connect_writer()
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        self._ready = True

    def install(self, db_path: Path) -> bool:
        """Copy the template to ``db_path`` unless a database is already there (a
        revived node keeps its own); returns True when copied."""
        if db_path.exists():
            return False
        if not self._ready:
            self._prepare()
        db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)   # a private data folder
        fd = os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out, open(self.path, "rb") as src:
            shutil.copyfileobj(src, out)
        return True
