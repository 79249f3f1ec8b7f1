"""Web sessions on disk, so a node restart does not log everybody out.

A SQLite file in the node's data directory, private to the node user (0600). It holds
no session id: rows are keyed by the SHA-256 of the id (the cookie), so reading the file
gives nobody a session. A row has the user's login name (the user's record is read again
when the session is restored: a user disabled or removed meanwhile gets no session),
the CSRF token, when the session began and when it was last used. ``last_seen`` is
written at most every ``touch_s`` seconds per session; a restored session therefore
looks at most that much older than it was, and the idle timeout ends it that much
earlier, never later. ``[http] persist_sessions = false`` keeps sessions in memory only.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from .private_sqlite import open_private_sqlite

log = logging.getLogger("medfed.web")

FILE = "sessions.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY,          -- sha256 of the session id, hex
    user TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created REAL NOT NULL,         -- wall clock (time.time)
    last_seen REAL NOT NULL
);
"""


def session_key(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


@dataclass(frozen=True)
class StoredSession:
    key: str
    user: str
    csrf: str
    created: float
    last_seen: float


class SessionBook:
    """The sessions file (blocking calls, each a short transaction)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = open_private_sqlite(path, SCHEMA)

    @classmethod
    def in_dir(cls, data_dir: Path) -> "SessionBook | None":
        try:
            return cls(Path(data_dir) / "web" / FILE)
        except (OSError, sqlite3.Error) as exc:
            log.warning("web sessions kept in memory only (%s): a restart logs users out",
                        type(exc).__name__)
            return None

    def _run(self, sql: str, params: tuple[object, ...]) -> None:
        with self._lock:
            try:
                self._conn.execute(sql, params)
            except sqlite3.Error as exc:   # the in-memory session still works
                log.warning("web session not written to disk: %s", type(exc).__name__)

    def put(self, s: StoredSession) -> None:
        self._run("INSERT OR REPLACE INTO sessions(key, user, csrf, created, last_seen) "
                  "VALUES (?,?,?,?,?)", (s.key, s.user, s.csrf, s.created, s.last_seen))

    def touch(self, key: str, last_seen: float) -> None:
        self._run("UPDATE sessions SET last_seen = ? WHERE key = ?", (last_seen, key))

    def delete(self, key: str) -> None:
        self._run("DELETE FROM sessions WHERE key = ?", (key,))

    def live(self, *, now: float, idle_s: float, absolute_s: float) -> list[StoredSession]:
        """Sessions still within both limits (the others are deleted)."""
        with self._lock:
            self._conn.execute("DELETE FROM sessions WHERE last_seen < ? OR created < ?",
                               (now - idle_s, now - absolute_s))
            rows = self._conn.execute(
                "SELECT key, user, csrf, created, last_seen FROM sessions "
                "ORDER BY last_seen").fetchall()
        return [StoredSession(str(r[0]), str(r[1]), str(r[2]), float(r[3]), float(r[4]))
                for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
