"""Web sessions and login lockout, in memory (pure: the clock is passed in, no I/O).

A session id is 256 random bits, made by the server at login and never taken from
the browser, so an id planted before login (session fixation) is worth nothing. A
session ends after ``idle_s`` without a request, after ``absolute_s`` in any case, and
at logout. Sessions live in the node process: a restart logs everybody out, which is the
safe way round. The store is bounded; when full, the least recently used session goes.

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

Clock = Callable[[], float]


@dataclass
class Session:
    sid: str
    principal: Principal
    csrf: str
    created: float
    last_seen: float


class SessionStore:
    def __init__(self, *, idle_s: float, absolute_s: float = 12 * 3600.0,
                 max_sessions: int = 10_000, secure: bool = True,
                 clock: Clock = time.monotonic) -> None:
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self.max_sessions = max_sessions
        self.secure = secure
        # the __Host- prefix makes browsers refuse the cookie unless Secure, Path=/, no Domain
        self.cookie_name = "__Host-medfed-session" if secure else "medfed-session"
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, principal: Principal) -> Session:
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), principal, secrets.token_urlsafe(32),
                          now, now)
        self._sessions[session.sid] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def get(self, sid: str) -> Session | None:
        """The live session with this id (and mark it used), or None."""
        session = self._sessions.get(sid) if sid else None
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen > self.idle_s or now - session.created > self.absolute_s:
            del self._sessions[sid]
            return None
        session.last_seen = now
        self._sessions.move_to_end(sid)
        return session

    def drop(self, sid: str) -> None:
        self._sessions.pop(sid, None)

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
