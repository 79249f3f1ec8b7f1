"""A small SQLite file of the web app's own, private to the node user (0600, folder 0700).

Opened once per process with one connection shared by threads under the caller's lock;
autocommit (each statement its own transaction unless the caller says BEGIN), WAL.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def open_private_sqlite(path: Path, schema: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))   # private before SQLite opens it
    os.chmod(path, 0o600)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(schema)
    return conn
