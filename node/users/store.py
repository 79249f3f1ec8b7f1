"""Local users of one node: who may log in at the home node, as what, for which purposes.

Users exist only at their home node; other sites learn about a user solely from signed
assertions (``node.net.assertion``), which carry the user's pseudonymous ``handle``, not
the login name. Passwords are stored as argon2id hashes (argon2-cffi). ``authenticate``
gives one answer for "no such user" and "wrong password" and spends the same work on
both, so the login form does not reveal which accounts exist.

Synchronous on purpose (sqlite3 + CPU-bound hashing): the CLI calls it directly, async
code calls it through ``asyncio.to_thread``. Each call opens its own connection, so the
store is safe to use from any thread.
"""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from node.net.assertion import PURPOSES, ROLES

MIN_PASSWORD = 10
MAX_PASSWORD = 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_DEPARTMENT = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    handle TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    department TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    purposes TEXT NOT NULL DEFAULT ''
)"""
# What a user may state as the purpose of a request unless `user add --purpose` says otherwise.
ROLE_PURPOSES: dict[str, tuple[str, ...]] = {
    "clinician": ("treatment",),
    "researcher": ("research",),
    "admin": ("operations",),
}
_COLUMNS = "name, handle, role, department, created_at, disabled, purposes"


class UserError(ValueError):
    """A user cannot be created or changed as asked (the message says why)."""


class AuthenticationFailed(Exception):
    """Login refused. Deliberately does not say whether the name or the password was wrong."""


@dataclass(frozen=True)
class User:
    name: str
    handle: str       # pseudonymous id used in assertions and audit entries
    role: str
    department: str
    created_at: int
    disabled: bool
    purposes: tuple[str, ...] = ()   # purposes this user may state in a request

    def may_state(self, purpose: str) -> bool:
        return purpose in self.purposes


class UserStore:
    """The node's users (``users.sqlite`` in the data folder, mode 0600)."""

    def __init__(self, path: Path, *, hasher: PasswordHasher | None = None) -> None:
        self.path = path
        self._hasher = hasher or PasswordHasher()
        self._dummy: str | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # password hashes: owner only
        os.chmod(path, 0o600)
        with self._db() as db:
            db.execute(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(users)")}
            if "purposes" not in columns:   # a users.sqlite written before purposes existed
                db.execute("ALTER TABLE users ADD COLUMN purposes TEXT NOT NULL DEFAULT ''")

    @property
    def _dummy_hash(self) -> str:
        """Hashed once, on first login: "no such user" costs as much as a wrong password."""
        if self._dummy is None:
            self._dummy = self._hasher.hash(secrets.token_hex(16))
        return self._dummy

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10.0)
        try:
            with db:  # one transaction: commit on success, roll back on error
                yield db
        finally:
            db.close()

    def add_user(self, name: str, role: str, department: str, password: str,
                 purposes: tuple[str, ...] | list[str] = ()) -> User:
        """``purposes`` empty: the role's usual ones (``ROLE_PURPOSES``)."""
        _check_new(name, role, department, password)
        allowed = _check_purposes(tuple(purposes) or ROLE_PURPOSES[role])
        user = User(name, "u-" + secrets.token_hex(8), role, department.strip(),
                    int(time.time()), False, allowed)
        digest = self._hasher.hash(password)
        try:
            with self._db() as db:
                db.execute("INSERT INTO users (name, handle, role, department, password_hash,"
                           " created_at, purposes) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (user.name, user.handle, user.role, user.department, digest,
                            user.created_at, ",".join(allowed)))
        except sqlite3.IntegrityError as exc:
            raise UserError(f"a user called {name!r} already exists") from exc
        return user

    def get(self, name: str) -> User | None:
        with self._db() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM users WHERE name = ?", (name,)).fetchone()
        return None if row is None else _user(row)

    def list_users(self) -> list[User]:
        with self._db() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM users ORDER BY name").fetchall()
        return [_user(r) for r in rows]

    def authenticate(self, name: str, password: str) -> User:
        with self._db() as db:
            row = db.execute("SELECT password_hash, disabled FROM users WHERE name = ?",
                             (name,)).fetchone()
        digest = row[0] if row else self._dummy_hash
        try:
            self._hasher.verify(digest, password[:MAX_PASSWORD])
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            raise AuthenticationFailed("unknown user or wrong password") from None
        if row is None or row[1]:
            raise AuthenticationFailed("unknown user or wrong password")
        if self._hasher.check_needs_rehash(digest):
            self._store_hash(name, self._hasher.hash(password))
        user = self.get(name)
        assert user is not None
        return user

    def set_password(self, name: str, password: str) -> None:
        _check_password(password)
        if not self._store_hash(name, self._hasher.hash(password)):
            raise UserError(f"no user called {name!r}")

    def set_disabled(self, name: str, disabled: bool) -> None:
        with self._db() as db:
            changed = db.execute("UPDATE users SET disabled = ? WHERE name = ?",
                                 (int(disabled), name)).rowcount
        if not changed:
            raise UserError(f"no user called {name!r}")

    def _store_hash(self, name: str, digest: str) -> bool:
        with self._db() as db:
            return db.execute("UPDATE users SET password_hash = ? WHERE name = ?",
                              (digest, name)).rowcount == 1


def _user(row: tuple[Any, ...]) -> User:
    name, handle, role, department, created_at, disabled, purposes = row
    allowed = tuple(p for p in purposes.split(",") if p) or ROLE_PURPOSES.get(role, ())
    return User(name, handle, role, department, created_at, bool(disabled), allowed)


def _check_purposes(purposes: tuple[str, ...]) -> tuple[str, ...]:
    for purpose in purposes:
        if purpose not in PURPOSES:
            raise UserError(f"purpose must be one of {', '.join(PURPOSES)}, not {purpose!r}")
    return tuple(dict.fromkeys(purposes))


def _check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UserError(f"password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters long")


def _check_new(name: str, role: str, department: str, password: str) -> None:
    if not _NAME.match(name):
        raise UserError("user name must be 1-64 characters: letters, digits, . _ @ -")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    if not _DEPARTMENT.match(department.strip()):
        raise UserError("department must be 1-64 printable characters")
    _check_password(password)
