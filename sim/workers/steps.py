"""A worker carries out its part of each step: its nodes' joins, publishes, lookups."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from node.dht.records import PayloadKind
from node.node import Node
from sim.grid import PEER_PORT, seeded_identity, virtual_host
from sim.scenarios.lookup import record_key
from sim.workers.network import PartitionedNetwork
from sim.workers.plan import Step


class StepRunner:
    def __init__(self, nodes: dict[int, Node], network: PartitionedNetwork, seed: int) -> None:
        self.nodes, self.network, self.seed = nodes, network, seed
        self._tasks: list[asyncio.Task[dict[str, Any] | None]] = []
        self.op = ""                    # the step running (or last run)

    def start(self, step: Step) -> None:
        """Start this worker's share of ``step`` now (the barrier it begins at)."""
        self.op = step.op
        self._tasks = [asyncio.get_running_loop().create_task(c) for c in self._actions(step)]

    def _actions(self, step: Step) -> list[Coroutine[Any, Any, dict[str, Any] | None]]:
        mine = [i for i in step.nodes if i in self.nodes]
        if step.op == "join":
            return [self._join(i, via) for i, via in zip(step.nodes, step.via)
                    if i in self.nodes]
        if step.op == "publish":
            return [self._publish(i) for i in mine]
        if step.op == "lookup":
            return [self._lookup(i, step.owner) for i in mine]
        if step.op == "kill":
            for i in step.nodes:        # every worker learns who is down
                self.network.set_up(virtual_host(i), False)
            return [self._stop(i) for i in mine]
        raise ValueError(f"unknown step {step.op!r}")

    def _dht(self, i: int) -> Any:
        dht = self.nodes[i].dht
        if dht is None:
            raise RuntimeError(f"node {i} has no DHT")
        return dht

    async def _join(self, i: int, via: tuple[int, ...]) -> None:
        await self._dht(i).bootstrap([(virtual_host(j), PEER_PORT) for j in via])

    async def _publish(self, i: int) -> None:
        await self._dht(i).publish(record_key(self.seed, i), 1, PayloadKind.NONE)

    async def _lookup(self, home: int, owner: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await self._dht(home).get(record_key(self.seed, owner))
        want = seeded_identity(self.seed, owner).node_id
        return {"ok": any(r.publisher == want for r in result.records),
                "hops": result.lookup.hops, "rpcs": result.lookup.rpcs,
                "ms": (loop.time() - started) * 1000}

    async def _stop(self, i: int) -> None:
        await self.nodes.pop(i).stop()

    def done(self) -> bool:
        return all(t.done() for t in self._tasks)

    def outcome(self) -> tuple[list[dict[str, Any]], str | None]:
        """Results of the finished step's actions, or the first action's error."""
        results: list[dict[str, Any]] = []
        for task in self._tasks:
            exc = task.exception()
            if exc is not None:
                return [], f"{type(exc).__name__}: {exc}"
            value = task.result()
            if value is not None:
                results.append(value)
        self._tasks = []
        return results, None
