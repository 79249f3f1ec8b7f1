"""A node's DICOMweb on an ephemeral loopback port, outside the web app (tests, benchmarks).

dicomweb-client and the benchmark clients are blocking, so nodes and their HTTP server
run on an event loop in a thread of their own (``loop_thread.LoopThread``) and callers use the
client from their own thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from node.users import User
from node.web.dicomweb import DicomwebContext, add_dicomweb
from node.web.dicomweb.requester import Authenticate

from .loop_thread import LoopThread
from .users import local_user

__all__ = ["LoopThread", "ServedDicomweb", "serve_dicomweb", "token_authenticate", "user_token"]


def token_authenticate(node: Any) -> Authenticate:
    """Bearer tokens of the node's own users (node.tokens), as the web app checks them."""
    async def authenticate(request: web.Request) -> User | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not token:
            return None
        return await asyncio.to_thread(node.tokens.verify_token, token)
    return authenticate


def user_token(node: Any, name: str, **kwargs: Any) -> str:
    """A bearer token for local user ``name`` (created when missing; blocking)."""
    return str(node.tokens.issue_token(local_user(node, name, **kwargs)))


@dataclass
class ServedDicomweb:
    runner: web.AppRunner
    port: int
    ctx: DicomwebContext

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicomweb"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def serve_dicomweb(node: Any, authenticate: Authenticate | None = None,
                         **kwargs: Any) -> ServedDicomweb:
    """DICOMweb of ``node`` on 127.0.0.1 (ephemeral port), BulkDataURIs from that URL."""
    app = web.Application()
    bound: list[int] = []
    ctx = add_dicomweb(app, node, authenticate or token_authenticate(node),
                       public_url=lambda: f"http://127.0.0.1:{bound[0]}", **kwargs)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None and server.sockets  # type: ignore[union-attr]
    bound.append(int(server.sockets[0].getsockname()[1]))  # type: ignore[union-attr]
    return ServedDicomweb(runner, bound[0], ctx)
