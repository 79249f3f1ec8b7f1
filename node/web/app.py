"""The web app on the node's web port: login, search, the OHIF viewer, DICOMweb.

One aiohttp application; the peer API is never mounted here (and the web app never on
the peer port). Parts add their routes: login, pages, the viewer, and DICOMweb through
``add_dicomweb(app, node, authenticate)``.
"""

from __future__ import annotations

import asyncio
import secrets
from functools import partial
from typing import TYPE_CHECKING

from aiohttp import web

from .accounts import Accounts, restored_principal
from .dicomweb import add_dicomweb
from .guard import errors, gate, security_headers
from .home import add_home_routes
from .jobs_routes import add_job_routes
from .keys import (ACCOUNTS_KEY, LOGIN_SECRET_KEY, NODE_KEY, PAGES_KEY, SESSIONS_KEY,
                   SETTINGS_KEY, THROTTLE_KEY)
from .login import Lockout, add_login_routes
from .pages import Pages
from .search import add_search_routes
from .similar_page import add_similar_routes
from .principal import authenticate
from .session_book import SessionBook
from .sessions import SessionStore
from .settings import WebSettings
from .trail import add_trail_routes
from .viewer import add_viewer_routes

if TYPE_CHECKING:
    from node.node import Node

MAX_BODY = 64 * 1024 * 1024   # STOW-RS uploads; forms are far smaller


def build_app(node: "Node", accounts: Accounts, settings: WebSettings) -> web.Application:
    app = web.Application(middlewares=[errors, gate], client_max_size=MAX_BODY)
    app[NODE_KEY] = node
    app[SETTINGS_KEY] = settings
    app[ACCOUNTS_KEY] = accounts
    book = SessionBook.in_dir(node.cfg.data_dir) if settings.persist_sessions else None
    sessions = app[SESSIONS_KEY] = SessionStore(idle_s=settings.session_idle_s,
                                                absolute_s=settings.session_absolute_s,
                                                secure=settings.secure, book=book)
    if book is not None:
        async def restore(_app: web.Application) -> None:
            await asyncio.to_thread(sessions.restore, partial(restored_principal, accounts))

        async def close(_app: web.Application) -> None:
            book.close()
        app.on_startup.append(restore)
        app.on_cleanup.append(close)
    app[THROTTLE_KEY] = Lockout.of(settings.max_login_failures, settings.lockout_s)
    app[PAGES_KEY] = Pages(node.cfg.name)
    app[LOGIN_SECRET_KEY] = secrets.token_bytes(32)
    app.on_response_prepare.append(security_headers)
    add_login_routes(app)
    add_home_routes(app)
    add_search_routes(app)
    add_similar_routes(app)
    add_job_routes(app)
    add_trail_routes(app)
    add_dicomweb(app, node, authenticate)
    add_viewer_routes(app)   # last: OHIF's catch-all
    return app
