"""Roster anti-entropy exchanges versions, not rosters (on the simulated network)."""

from __future__ import annotations

from pathlib import Path

from node.net.federation import revoke
from node.net.server import ROSTER_PATH
from node.testing.traffic import TrafficRecorder
from sim.grid import SimGrid
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
