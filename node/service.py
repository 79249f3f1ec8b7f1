"""What every part of a node that lives as long as the node implements.

Kept apart from `node.node` (which runs the services) and from `node.services` (which
lists them), so that the parts and the node depend on this protocol and not on each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .node import Node


class NodeService(Protocol):
    """A part of the node that lives as long as the node (started in list order)."""

    name: str

    # Optional: ``register_routes(node)`` is called once node.peer exists (federated
    # nodes only), before the peer server starts listening.

    async def start(self, node: "Node") -> None: ...

    async def stop(self) -> None: ...
