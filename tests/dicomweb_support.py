"""Shared set-up for the DICOMweb tests: two local users with bearer tokens, one
dicomweb-client per user, on a node served by ``node.testing.dicomweb``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from dicomweb_client.api import DICOMwebClient

from node.testing.dicomweb import LoopThread, ServedDicomweb, serve_dicomweb, user_token

__all__ = ["LoopThread", "Served", "serve"]


@dataclass
class Served(ServedDicomweb):
    token: str = ""          # alice's
    other_token: str = ""    # bob's

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def client(self, token: str | None = None, *, local: bool = False) -> DICOMwebClient:
        return DICOMwebClient(self.url + ("/local" if local else ""), headers=self.auth(token))


async def serve(node: Any, **kwargs: Any) -> Served:
    """The node's DICOMweb with users alice and bob (clinicians) and their tokens."""
    served = await serve_dicomweb(node, **kwargs)
    alice = await asyncio.to_thread(user_token, node, "alice")
    bob = await asyncio.to_thread(user_token, node, "bob")
    return Served(served.runner, served.port, served.ctx, alice, bob)
