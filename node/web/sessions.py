"""Web sessions and login lockout, in memory (pure: the clock is passed in, no I/O).

A session id is 256 random bits, made by the server at login and never taken from
the browser, so an id planted before login (session fixation) is worth nothing. A
session ends after ``idle_s`` without a request, after ``absolute_s`` in any case, and
at logout. With a ``SessionBook`` sessions are also kept on disk (hashed ids only) and
restored when the node starts again, idle and absolute limits still counted from what
was stored; without one a restart logs everybody out. The store is bounded; when full,
the least recently used session goes.

The throttle counts failed logins per user name and per client address; past the limit
that key is locked out for ``lockout_s`` whatever password is offered next.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .principal import Principal
from .session_book import SessionBook, StoredSession, session_key

Clock = Callable[[], float]


@dataclass
class Session:
    sid: str                 # "" for a restored session until its cookie is seen again
    principal: Principal
    csrf: str
    created: float
    last_seen: float
    key: str = ""            # sha256 of sid: how the store (and its file) knows it
    saved_seen: float = 0.0  # last_seen as last written to the book


class SessionStore:
    def __init__(self, *, idle_s: float, absolute_s: float = 12 * 3600.0,
                 max_sessions: int = 10_000, secure: bool = True,
                 clock: Clock = time.time, book: "SessionBook | None" = None,
                 touch_s: float = 30.0) -> None:
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self.max_sessions = max_sessions
        self.secure = secure
        # the __Host- prefix makes browsers refuse the cookie unless Secure, Path=/, no Domain
        self.cookie_name = "__Host-medfed-session" if secure else "medfed-session"
        self._clock = clock
        self.book = book
        self.touch_s = min(touch_s, idle_s / 4)
        self._sessions: OrderedDict[str, Session] = OrderedDict()   # by key

    def _add(self, session: Session) -> None:
        self._sessions[session.key] = session
        while len(self._sessions) > self.max_sessions:
            _key, old = self._sessions.popitem(last=False)
            if self.book is not None:
                self.book.delete(old.key)

    def create(self, principal: Principal) -> Session:
        now = self._clock()
        sid = secrets.token_urlsafe(32)
        session = Session(sid, principal, secrets.token_urlsafe(32), now, now,
                          key=session_key(sid), saved_seen=now)
        self._add(session)
        if self.book is not None:
            self.book.put(StoredSession(session.key, principal.user, session.csrf, now, now))
        return session

    def restore(self, principal_for: "Callable[[str], Principal | None]") -> int:
        """Sessions from the book whose user may still log in (blocking: reads users)."""
        if self.book is None:
            return 0
        restored = 0
        for row in self.book.live(now=self._clock(), idle_s=self.idle_s,
                                  absolute_s=self.absolute_s):
            principal = principal_for(row.user)
            if principal is None:
                self.book.delete(row.key)
                continue
            self._add(Session("", principal, row.csrf, row.created, row.last_seen,
                              key=row.key, saved_seen=row.last_seen))
            restored += 1
        return restored

    def get(self, sid: str) -> Session | None:
        """The live session with this id (and mark it used), or None."""
        key = session_key(sid) if sid else ""
        session = self._sessions.get(key) if key else None
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen > self.idle_s or now - session.created > self.absolute_s:
            self.drop(sid)
            return None
        session.sid = sid
        session.last_seen = now
        self._sessions.move_to_end(key)
        if self.book is not None and now - session.saved_seen >= self.touch_s:
            session.saved_seen = now
            self.book.touch(key, now)
        return session

    def drop(self, sid: str) -> None:
        key = session_key(sid) if sid else ""
        if self._sessions.pop(key, None) is not None and self.book is not None:
            self.book.delete(key)

    def __len__(self) -> int:
        return len(self._sessions)


@dataclass
class _Failures:
    times: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class LoginThrottle:
    def __init__(self, *, max_failures: int = 5, window_s: float = 900.0,
                 lockout_s: float = 900.0, clock: Clock = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self._clock = clock
        self._max_keys = max_keys
        self._keys: OrderedDict[str, _Failures] = OrderedDict()

    def locked_for(self, *keys: str) -> float:
        """Seconds until the first of these keys may try again (0 = not locked)."""
        now = self._clock()
        waits = [f.locked_until - now for k in keys if (f := self._keys.get(k)) is not None]
        return max([0.0, *waits])

    def failed(self, *keys: str) -> bool:
        """Count one failure for each key; True when that locked any of them."""
        now = self._clock()
        locked = False
        for key in keys:
            entry = self._keys.setdefault(key, _Failures())
            self._keys.move_to_end(key)
            entry.times = [t for t in entry.times if now - t <= self.window_s] + [now]
            if len(entry.times) >= self.max_failures:
                entry.locked_until = now + self.lockout_s
                entry.times.clear()
                locked = True
        while len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)
        return locked

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._keys.pop(key, None)
