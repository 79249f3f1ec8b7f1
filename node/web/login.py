"""Login and logout at the web port.

The login form is protected against cross-site posting before any session exists: the
page sets a random pre-login cookie and the form carries its HMAC under a secret of
this process, so only a page this server rendered for this browser can post it. A
successful login always makes a new session id (the old cookie, if any, is dropped).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass

from aiohttp import web

from node.users import AuthenticationFailed

from .audit import audit_web
from .guard import safe_next
from .keys import ACCOUNTS_KEY, LOGIN_SECRET_KEY, SESSIONS_KEY, SESSION_KEY, THROTTLE_KEY
from .pages import render
from .principal import authenticate
from .sessions import LoginThrottle, SessionStore

PRE_COOKIE = "medfed-login"
MAX_FIELD = 1024


@dataclass
class Lockout:
    """Failed logins counted per user name and (more leniently) per client address."""

    by_user: LoginThrottle
    by_address: LoginThrottle

    @classmethod
    def of(cls, max_failures: int, lockout_s: float) -> "Lockout":
        return cls(LoginThrottle(max_failures=max_failures, lockout_s=lockout_s),
                   LoginThrottle(max_failures=4 * max_failures, lockout_s=lockout_s))

    def wait_s(self, user: str, address: str) -> float:
        return max(self.by_user.locked_for(user), self.by_address.locked_for(address))

    def failed(self, user: str, address: str) -> bool:
        return self.by_user.failed(user) | self.by_address.failed(address)

    def succeeded(self, user: str) -> None:
        self.by_user.succeeded(user)


def _login_token(request: web.Request, pre: str) -> str:
    secret = request.config_dict[LOGIN_SECRET_KEY]
    return hmac.new(secret, b"login:" + pre.encode(), hashlib.sha256).hexdigest()


def set_cookie(response: web.StreamResponse, sessions: SessionStore, name: str, value: str,
               max_age: int | None = None) -> None:
    response.set_cookie(name, value, path="/", httponly=True, samesite="Strict",
                        secure=sessions.secure, max_age=max_age)


def _login_page(request: web.Request, *, status: int = 200, error: str = "",
                next_path: str = "/") -> web.Response:
    sessions = request.config_dict[SESSIONS_KEY]
    pre = request.cookies.get(PRE_COOKIE, "")
    if not (16 <= len(pre) <= 64 and pre.replace("-", "").replace("_", "").isalnum()):
        pre = secrets.token_urlsafe(24)
    response = render(request, "login.html", status=status, title="Sign in", error=error,
                      login_csrf=_login_token(request, pre), next_path=next_path)
    set_cookie(response, sessions, PRE_COOKIE, pre, max_age=3600)
    return response


async def login_form(request: web.Request) -> web.StreamResponse:
    next_path = safe_next(request.query.get("next"))
    if await authenticate(request) is not None:
        raise web.HTTPSeeOther(next_path)
    return _login_page(request, next_path=next_path)


async def login_submit(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    next_path = safe_next(str(form.get("next", "/")))
    pre = request.cookies.get(PRE_COOKIE, "")
    offered = str(form.get("csrf", ""))
    if not pre or not hmac.compare_digest(offered, _login_token(request, pre)):
        audit_web(request, "login", "refused", reason="csrf")
        return _login_page(request, status=403, next_path=next_path,
                           error="The sign-in form expired or did not come from this site. "
                                 "Please try again.")
    name = str(form.get("username", "")).strip()[:MAX_FIELD]
    password = str(form.get("password", ""))[:MAX_FIELD]
    accounts = request.config_dict[ACCOUNTS_KEY]
    lockout = request.config_dict[THROTTLE_KEY]
    user_key, address = f"user:{name.lower()}", f"addr:{request.remote}"
    handle = await accounts.handle_of(name) if name else None
    actor = handle or "anonymous"
    wait = lockout.wait_s(user_key, address)
    if wait > 0:
        audit_web(request, "login", "locked", actor=actor)
        return _login_page(request, status=429, next_path=next_path,
                           error="Too many failed sign-in attempts. Try again in "
                                 f"{math.ceil(wait / 60)} minute(s) or ask your administrator.")
    try:
        principal = await accounts.login(name, password)
    except AuthenticationFailed:
        locked = lockout.failed(user_key, address)
        audit_web(request, "login", "failed", actor=actor, locked=locked)
        return _login_page(request, status=401, next_path=next_path,
                           error="Unknown user name or wrong password.")
    lockout.succeeded(user_key)
    sessions = request.config_dict[SESSIONS_KEY]
    old = request.get(SESSION_KEY)
    if old is not None:
        sessions.drop(old.sid)
    session = sessions.create(principal)
    audit_web(request, "login", "ok", actor=principal.handle, role=principal.role)
    response = web.HTTPSeeOther(next_path)
    set_cookie(response, sessions, sessions.cookie_name, session.sid)
    set_cookie(response, sessions, PRE_COOKIE, "", max_age=0)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    sessions = request.config_dict[SESSIONS_KEY]
    session = request.get(SESSION_KEY)
    if session is not None:
        sessions.drop(session.sid)
    audit_web(request, "logout", "ok")
    response = web.HTTPSeeOther("/login")
    set_cookie(response, sessions, sessions.cookie_name, "", max_age=0)
    raise response


def add_login_routes(app: web.Application) -> None:
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login_submit)
    app.router.add_post("/logout", logout)
