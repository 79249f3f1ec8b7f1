"""Which sites a federated query goes to.

The broadcast planner asks every active member, the home site included (it answers from
its own SQLite through the same serving code, without a network call). A DHT planner
that narrows the sites by index records plugs in through the same ``Planner`` protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from node.net.roster import Member

from .model import FederatedQuery


@dataclass
class Plan:
    sites: list[Member]
    mode: str                 # "broadcast" | "dht"
    skipped: int = 0          # active members the planner left out
    detail: dict[str, Any] = field(default_factory=dict)


class Planner(Protocol):
    async def plan(self, query: FederatedQuery, members: Sequence[Member], *,
                   broadcast: bool) -> Plan: ...


class BroadcastPlanner:
    """Every active member: complete recall, cost grows with the federation."""

    async def plan(self, query: FederatedQuery, members: Sequence[Member], *,
                   broadcast: bool) -> Plan:
        sites = sorted(members, key=lambda m: (m.name, m.node_id))
        return Plan(sites, "broadcast", 0, {"members": len(sites)})
