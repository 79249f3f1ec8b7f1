"""Lifetimes of user assertions and release policies run on the node's own clock.

A simulated node's clock is virtual (``Transport.wall_clock`` = EPOCH + loop time), so an
assertion issued at one virtual moment and presented after its lifetime has passed in
virtual time must be refused by the owner and by every share holder — even though only
a fraction of a second of wall time went by. With the wall clock (``time.time()``) in the
issue and in the checks, the stale assertion was accepted and a fresh one depended on how
far the host's wall clock happened to be from the simulator's epoch.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from node.net.assertion import CLOCK_SKEW_S, DEFAULT_TTL_S
from node.sharing.retrieve import FetchError, FetchRefused, Retriever, SeriesRef, local_assertion
from sim.grid import SimGrid
from sim.netmodel import NetModel
from sim.network import SimNetwork
from sim.scenarios.common import CLINICIAN
from sim.scenarios.sharing import MemorySink, sharing_services
from sim.vclock import EPOCH, run_virtual
from tests.sharing_support import publish_one_series


async def _published(grid: SimGrid) -> tuple[str, str, int]:
    owner = grid.nodes[0]
    entry = await publish_one_series(owner, seed=5)
    assert entry.reached("published")
    return owner.node_id, entry.bundle_id, entry.instances


def test_assertion_lifetime_passes_in_virtual_time_not_wall_time(tmp_path: Path) -> None:
    async def main() -> dict[str, object]:
        network = SimNetwork(NetModel(latency_ms=5), seed=7)
        grid = await SimGrid.start(tmp_path, 6, seed=7, services=sharing_services,
                                   network=network, bootstrap="roster")
        try:
            owner_id, bundle_id, instances = await _published(grid)
            requester = grid.nodes[5]
            ref = SeriesRef(owner_id, bundle_id)
            loop = asyncio.get_running_loop()
            out: dict[str, object] = {"node_clock": requester.transport.wall_clock() - EPOCH,
                                      "loop": loop.time()}
            stale = local_assertion(requester, **CLINICIAN)
            out["issued_vs_node_clock"] = stale.issued_at - requester.transport.wall_clock()
            await asyncio.sleep(DEFAULT_TTL_S + CLOCK_SKEW_S + 60)   # virtual: no wall time
            fresh = local_assertion(requester, **CLINICIAN)

            async def stale_then_fresh(refused: type[Exception]) -> tuple[str, tuple[str, bool]]:
                """The stale assertion's outcome, then the fresh one's (source, all there)."""
                try:
                    await Retriever(requester, deadline_s=60).fetch(ref, stale, lambda _b: MemorySink())
                    stale_outcome = "accepted"
                except refused as exc:
                    stale_outcome = str(exc)
                sink = MemorySink()
                result = await Retriever(requester, deadline_s=60).fetch(ref, fresh, lambda _b: sink)
                return stale_outcome, (result.source.split(":")[0], len(sink.instances) == instances)

            out["owner_stale"], out["owner_fresh"] = await stale_then_fresh(FetchRefused)
            await grid.kill(0)                                       # replica + key shares
            out["replica_stale"], out["replica_fresh"] = await stale_then_fresh(FetchError)
            return out
        finally:
            await grid.stop()

    got = run_virtual(main())
    assert abs(float(got["node_clock"]) - float(got["loop"])) < 1   # the node tells virtual time
    assert "expired" in str(got["owner_stale"])
    assert got["owner_fresh"] == ("owner", True)
    assert "key shares" in str(got["replica_stale"]) and "expired" in str(got["replica_stale"])
    assert got["replica_fresh"] == ("replica", True)
    assert -1 <= float(got["issued_vs_node_clock"]) <= 0             # issued in node time
