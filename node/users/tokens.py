"""Short-lived bearer tokens for local users (CLI `medfed user login`, web bearer, DICOMweb).

A token is 32 random bytes (URL-safe text, prefix ``mft_``). Only its SHA-256 is stored, in
the node's ``users.sqlite`` (mode 0600): a copy of the database does not let anyone log
in. Tokens expire (``DEFAULT_TTL_S``, at most ``MAX_TTL_S``); a disabled user's tokens stop
working at once, because ``verify_token`` reads the user record on every call.

Synchronous like ``UserStore``: async code calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .store import User, UserError, UserStore

TOKEN_PREFIX = "mft_"
DEFAULT_TTL_S = 8 * 3600      # one working shift
MAX_TTL_S = 24 * 3600
MAX_TOKEN_CHARS = 128
_SCHEMA = """
CREATE TABLE IF NOT EXISTS user_tokens (
    digest TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
)"""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenStore:
    """Issue, check and revoke tokens of the users in ``users``."""

    def __init__(self, users: UserStore) -> None:
        self.users = users
        with self._db() as db:
            db.execute(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.users.path, timeout=10.0)
        try:
            with db:
                yield db
        finally:
            db.close()

    def issue_token(self, user: User | str, ttl_s: float = DEFAULT_TTL_S, *,
                    now: float | None = None) -> str:
        """A new token for an existing, enabled user; raises UserError otherwise."""
        name = user.name if isinstance(user, User) else user
        record = self.users.get(name)
        if record is None or record.disabled:
            raise UserError(f"no enabled user called {name!r}")
        if not 0 < ttl_s <= MAX_TTL_S:
            raise UserError(f"token lifetime must be 1-{MAX_TTL_S} seconds")
        issued = int(time.time() if now is None else now)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._db() as db:
            db.execute("DELETE FROM user_tokens WHERE expires_at < ?", (issued,))
            db.execute("INSERT INTO user_tokens (digest, name, issued_at, expires_at) "
                       "VALUES (?, ?, ?, ?)", (_digest(token), name, issued, issued + int(ttl_s)))
        return token

    def verify_token(self, token: str, *, now: float | None = None) -> User | None:
        """The token's user while the token is unexpired and unrevoked and the user enabled."""
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) \
                or len(token) > MAX_TOKEN_CHARS:
            return None
        with self._db() as db:
            row = db.execute("SELECT name, expires_at FROM user_tokens WHERE digest = ?",
                             (_digest(token),)).fetchone()
        if row is None or (time.time() if now is None else now) >= row[1]:
            return None
        user = self.users.get(row[0])
        return None if user is None or user.disabled else user

    def revoke(self, token: str) -> bool:
        """Forget one token (logout); True when it existed."""
        with self._db() as db:
            return db.execute("DELETE FROM user_tokens WHERE digest = ?",
                              (_digest(token),)).rowcount == 1

    def revoke_user(self, name: str) -> int:
        """Forget every token of a user (password change, user disabled); how many."""
        with self._db() as db:
            return db.execute("DELETE FROM user_tokens WHERE name = ?", (name,)).rowcount
