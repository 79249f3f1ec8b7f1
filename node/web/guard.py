"""The web port's gate: who may reach what, CSRF, and the headers every response carries.

Every path needs a login except the login page and the app's own static files. An
unauthenticated browser is sent to the login page; DICOMweb and JSON clients get 401
with ``WWW-Authenticate: Bearer``. A state-changing request carried by the session
cookie must come from this origin and, except for DICOMweb (OHIF cannot send a token),
carry the session's CSRF token (form field ``csrf`` or header ``X-CSRF-Token``). Bearer requests carry no
ambient credentials, so they need neither.
"""

from __future__ import annotations

import hmac
import logging
import traceback
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from aiohttp import web

from .audit import audit_web
from .keys import SESSION_KEY
from .principal import authenticate

log = logging.getLogger("medfed.web")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = frozenset({"/login", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
API_PREFIXES = ("/dicomweb/", "/api/")
OWN_CSRF = frozenset({"/login"})   # checks its own pre-login token

APP_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
           "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
           "form-action 'self'; frame-ancestors 'none'")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def is_dicomweb(path: str) -> bool:
    return path == "/dicomweb" or path.startswith("/dicomweb/")


def is_api(path: str) -> bool:
    return path.startswith(API_PREFIXES) or is_dicomweb(path)


def safe_next(value: str | None) -> str:
    """A local path to go to after login; anything that could leave this site becomes '/'."""
    if not value or len(value) > 2000 or not value.startswith("/") or value.startswith("//"):
        return "/"
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7f for c in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def unauthorized(request: web.Request) -> web.StreamResponse:
    if (is_api(request.path) or request.method not in SAFE_METHODS
            or "Authorization" in request.headers):
        return web.json_response(
            {"error": "unauthorized", "reason": "log in, or send Authorization: Bearer <token>"},
            status=401, headers={"WWW-Authenticate": 'Bearer realm="medfed"'})
    raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='/')}")


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:   # browsers send Origin on every cross-site POST; no Origin = no browser attack
        referer = request.headers.get("Referer")
        if referer is None:
            return True
        origin = referer
    parts = urlsplit(origin)
    return parts.netloc == request.host and parts.scheme == request.scheme


async def _csrf_ok(request: web.Request) -> bool:
    session = request.get(SESSION_KEY)
    if session is None:
        return False
    offered = request.headers.get("X-CSRF-Token")
    if offered is None and request.content_type in ("application/x-www-form-urlencoded",
                                                    "multipart/form-data"):
        offered = str((await request.post()).get("csrf", ""))
    return bool(offered) and hmac.compare_digest(offered, session.csrf)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An unexpected failure is one log line (code lines only: messages may quote data)
    and a plain 500 for the user, never a traceback in the browser."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        log.error("web request %s %s failed (%s):\n%s", request.method, request.path[:80],
                  type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__)))
        return web.Response(status=500, content_type="text/plain",
                            text="The node could not complete this request (internal error). "
                                 "It has been logged; please tell your PACS team.")


@web.middleware
async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    principal = await authenticate(request)
    if principal is None:
        if not is_public(path):
            return unauthorized(request)
    elif principal.via == "session" and request.method not in SAFE_METHODS:
        if not _same_origin(request):
            audit_web(request, "csrf", "refused", reason="cross-origin", path=path[:80])
            return web.json_response({"error": "forbidden",
                                      "reason": "cross-origin request refused"}, status=403)
        if not is_dicomweb(path) and path not in OWN_CSRF and not await _csrf_ok(request):
            audit_web(request, "csrf", "refused", reason="token", path=path[:80])
            raise web.HTTPForbidden(text="The form has expired or did not come from this site. "
                                         "Reload the page and try again.")
    return await handler(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: headers for every response, static files and errors included."""
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Content-Security-Policy", APP_CSP)
    if request.secure:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
