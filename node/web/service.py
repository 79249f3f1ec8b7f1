"""NodeService "web": the web app on the node's [http] port, started and stopped with the node."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from node.ports import listening

from .accounts import Accounts, TokenLookup
from .app import build_app
from .settings import WebSettings
from .tls import web_ssl_context

if TYPE_CHECKING:
    from node.node import Node

log = logging.getLogger("medfed.web")


class WebService:
    name = "web"

    def __init__(self, *, token_lookup: TokenLookup | None = None,
                 settings: WebSettings | None = None) -> None:
        """``settings`` overrides what [http] says (tests); ``token_lookup`` decides
        bearer tokens (default: none are valid)."""
        self._token_lookup = token_lookup
        self._settings = settings
        self._runner: web.AppRunner | None = None
        self.app: web.Application | None = None
        self.port = 0
        self.url = ""

    async def start(self, node: "Node") -> None:
        cfg = node.cfg
        ssl_context = web_ssl_context(cfg)
        settings = self._settings or WebSettings(secure=ssl_context is not None,
                                                 session_idle_s=cfg.http_session_idle_s,
                                                 persist_sessions=cfg.http_persist_sessions,
                                                 ohif_dir=default_ohif_dir())
        users = await asyncio.to_thread(lambda: node.users)   # opening hashes a dummy password
        accounts = Accounts(users, node.tokens, token_lookup=self._token_lookup)
        self.app = build_app(node, accounts, settings)
        runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True,
                               shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, cfg.http_host, cfg.http_port, ssl_context=ssl_context)
            await listening(site.start, service="web", host=cfg.http_host, port=cfg.http_port,
                            config_key="[http] port")
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        scheme = "https" if ssl_context is not None else "http"
        host = f"[{cfg.http_host}]" if ":" in cfg.http_host else cfg.http_host
        self.url = f"{scheme}://{host}:{self.port}/"
        node.ports.web = self.port
        log.info("web app listening on %s", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self.app = None


def default_ohif_dir() -> Path | None:
    from .viewer import installed_ohif_dir

    return installed_ohif_dir()
