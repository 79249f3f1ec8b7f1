"""Roster anti-entropy exchanges versions, not rosters (on the simulated network)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from node.config.model import NodeConfig
from node.net.federation import revoke
from node.net.server import ROSTER_PATH
from node.testing.traffic import TrafficRecorder
from sim.grid import SimGrid, sim_config
from sim.netmodel import NetModel
from sim.network import SimNetwork
from sim.vclock import run_virtual


def test_anti_entropy_sends_a_version_and_the_roster_only_to_whom_lacks_it(tmp_path: Path) -> None:
    async def main() -> tuple[list[tuple[str, str, int]], list[int]]:
        network = SimNetwork(NetModel(), 1)
        grid = await SimGrid.start(tmp_path, 4, seed=1, bootstrap="none", network=network)
        try:
            await grid.settle(30.0)                          # first rounds at start are over
            traffic = TrafficRecorder()
            for node in grid.nodes:
                traffic.attach(node.client, node.cfg.name)   # type: ignore[arg-type]
            for node in grid.nodes:                          # same roster everywhere
                await node.gossip.round()                    # type: ignore[union-attr]
            same = [(e.method, e.path, len(e.sent)) for e in traffic.exchanges
                    if e.path == ROSTER_PATH]
            signed = revoke(grid.fed.operator_dir, grid.nodes[3].node_id)
            grid.nodes[0].membership.roster.offer(signed)    # type: ignore[union-attr]
            await grid.settle(30.0)                          # push on change, then rounds
            versions = [n.membership.roster.current.version  # type: ignore[union-attr]
                        for n in grid.nodes]
            return same, versions + [signed.roster.version]
        finally:
            await grid.stop()

    same, versions = run_virtual(main())
    assert len(same) == 4 * 3                                # 3 peers each (pull_peers)
    assert all(method == "POST" and size < 64 for method, _path, size in same)
    assert set(versions) == {versions[-1]}                   # the new roster still spread


def _no_push(cfg: NodeConfig) -> NodeConfig:
    return dataclasses.replace(sim_config(cfg), federation=dataclasses.replace(
        cfg.federation, roster_push_fanout=0))


def test_quiet_rounds_back_off_and_a_change_is_still_spread_by_anti_entropy_alone(
        tmp_path: Path) -> None:
    """Trickle (node.net.gossip): a federation whose rosters agree offers versions ever
    less often (10 s doubling to 160 s); a change resets the period, and anti-entropy
    alone (no push) brings every member the new roster within a minute."""
    async def main() -> tuple[int, int, float, set[int], int]:
        network = SimNetwork(NetModel(), 2)
        grid = await SimGrid.start(tmp_path, 8, seed=2, bootstrap="none", network=network,
                                   configure=_no_push)
        try:
            traffic = TrafficRecorder()
            for node in grid.nodes:
                traffic.attach(node.client, node.cfg.name)   # type: ignore[arg-type]
            await grid.settle(300.0)
            early = sum(1 for e in traffic.exchanges if e.path == ROSTER_PATH)
            await grid.settle(600.0)
            late = sum(1 for e in traffic.exchanges if e.path == ROSTER_PATH) - early
            signed = revoke(grid.fed.operator_dir, grid.nodes[7].node_id)
            want = signed.roster.version
            loop = asyncio.get_running_loop()
            adopted: list[float] = []
            for node in grid.nodes[1:7]:                     # when each one adopts it
                node.membership.roster.subscribe(            # type: ignore[union-attr]
                    lambda roster: roster.version == want and adopted.append(loop.time()))
            started = loop.time()
            grid.nodes[0].membership.roster.offer(signed)    # type: ignore[union-attr]
            await grid.settle(120.0)
            took = max(adopted) - started if len(adopted) == 6 else -1.0
            versions = {n.membership.roster.current.version  # type: ignore[union-attr]
                        for n in grid.nodes[:7]}
            return early, late, took, versions, want
        finally:
            await grid.stop()

    early, late, took, versions, want = run_virtual(main())
    # without the back-off: 8 members x 3 peers every 10 s = 240 offers per 100 s
    assert late < early            # the last 600 s offered less than the first 300 s
    assert late <= 8 * 3 * 600 / 80     # at most one round per 80 s on average
    assert versions == {want} and 0 < took <= 60.0
