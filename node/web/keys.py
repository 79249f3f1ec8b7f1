"""Typed keys for what the web app keeps on its aiohttp application and requests."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from node.node import Node

    from .accounts import Accounts
    from .jobs import JobRunner
    from .pages import Pages
    from .login import Lockout
    from .sessions import Session, SessionStore
    from .settings import WebSettings


class _UnsetType:
    """Marks 'not looked up yet' where None is a real answer (no user)."""


Unset: Any = _UnsetType()

NODE_KEY = web.AppKey("node", "Node")
SETTINGS_KEY = web.AppKey("settings", "WebSettings")
ACCOUNTS_KEY = web.AppKey("accounts", "Accounts")
SESSIONS_KEY = web.AppKey("sessions", "SessionStore")
THROTTLE_KEY = web.AppKey("throttle", "Lockout")
PAGES_KEY = web.AppKey("pages", "Pages")
LOGIN_SECRET_KEY = web.AppKey("login_secret", bytes)
JOBS_KEY = web.AppKey("jobs", "JobRunner")

PRINCIPAL_KEY = web.RequestKey("principal", object)
SESSION_KEY = web.RequestKey("session", "Session")
