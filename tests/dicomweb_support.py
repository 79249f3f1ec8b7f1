"""Shared set-up for the DICOMweb tests: nodes on a background loop, served over HTTP.

dicomweb-client is blocking (requests), so the nodes and their web server run on an
event loop in a thread of their own and the tests call the client from the main thread.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

from aiohttp import web
from dicomweb_client.api import DICOMwebClient

from node.web.dicomweb import DicomwebContext, add_dicomweb

T = TypeVar("T")
TOKEN = "mft_test-token-for-dicomweb"


@dataclass(frozen=True)
class TestUser:
    name: str = "alice"
    handle: str = "usr-alice"
    role: str = "clinician"
    department: str = "radiology"


@dataclass(frozen=True)
class TestPrincipal:
    user: TestUser
    purpose: str = "treatment"


OTHER_TOKEN = "mft_second-user-token"
USERS = {TOKEN: TestPrincipal(TestUser()),
         OTHER_TOKEN: TestPrincipal(TestUser("bob", "usr-bob"))}


def bearer_auth(users: dict[str, TestPrincipal] = USERS) -> Callable[[web.Request], Any]:
    """Stands in for the web app's authenticate() until it lands: fixed tokens."""
    def authenticate(request: web.Request) -> TestPrincipal | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return users.get(token) if scheme == "Bearer" else None
    return authenticate


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="dicomweb-test-loop")
        self._thread.start()

    def call(self, coro: Awaitable[T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Served:
    runner: web.AppRunner
    port: int
    ctx: DicomwebContext

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicomweb"

    def client(self, token: str | None = TOKEN, *, local: bool = False) -> DICOMwebClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return DICOMwebClient(self.url + ("/local" if local else ""), headers=headers)


async def serve(node: Any, **kwargs: Any) -> Served:
    """The node's DICOMweb on an ephemeral loopback port, BulkDataURIs from its URL."""
    app = web.Application()
    port_box: list[int] = []
    ctx = add_dicomweb(app, node, kwargs.pop("authenticate", bearer_auth()),
                       public_url=lambda: f"http://127.0.0.1:{port_box[0]}", **kwargs)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    port_box.append(port)
    return Served(runner, port, ctx)
