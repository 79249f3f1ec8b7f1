"""Shared set-up for the DICOMweb tests: test principals and a dicomweb-client per user.

Until the web app's authenticate() is used, a fixed-token stand-in decides who asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web
from dicomweb_client.api import DICOMwebClient

from node.testing.dicomweb import LoopThread, ServedDicomweb, serve_dicomweb

__all__ = ["LoopThread", "Served", "serve", "TOKEN", "OTHER_TOKEN", "bearer_auth"]

TOKEN = "mft_test-token-for-dicomweb"
OTHER_TOKEN = "mft_second-user-token"


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


USERS = {TOKEN: TestPrincipal(TestUser()),
         OTHER_TOKEN: TestPrincipal(TestUser("bob", "usr-bob"))}


def bearer_auth(users: dict[str, TestPrincipal] = USERS) -> Callable[[web.Request], Any]:
    """Stands in for the web app's authenticate(): fixed tokens."""
    def authenticate(request: web.Request) -> TestPrincipal | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return users.get(token) if scheme == "Bearer" else None
    return authenticate


class Served(ServedDicomweb):
    def client(self, token: str | None = TOKEN, *, local: bool = False) -> DICOMwebClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return DICOMwebClient(self.url + ("/local" if local else ""), headers=headers)


async def serve(node: Any, **kwargs: Any) -> Served:
    served = await serve_dicomweb(node, kwargs.pop("authenticate", bearer_auth()), **kwargs)
    return Served(served.runner, served.port, served.ctx)
