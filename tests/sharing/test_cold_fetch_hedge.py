"""A cold fetch dials the replica path while the owner's connection opens (``sharing.hedge``).

Virtual time, in-memory network (10 ms one way, TCP + TLS = 2 round trips), real nodes.
A requester with nothing open and nothing known (``medfed fetch`` with no node running):
with the owner down, the replica + key-share path's connections are ready when the
owner's connect is refused, so the fallback costs its requests' round trip only; with
the owner up, the extra connections carry nothing (no key share released). A requester
whose keeper keeps the owner's connection, or knows the owner is down, dials nothing more.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from node.sharing import hedge
from node.sharing.retrieve import Retriever, SeriesRef, local_assertion
from sim.grid import SimGrid, virtual_host
from sim.netmodel import NetModel
from sim.network import SimNetwork
from sim.scenarios.common import CLINICIAN
from sim.scenarios.sharing import MemorySink, sharing_services
from sim.vclock import run_virtual
from tests.keyshare_helpers import audit_entries
from tests.sharing_support import bystander, publish_one_series


def _released(grid: SimGrid) -> int:
    """Key shares released so far, by the audit logs of the nodes that are up."""
    return sum(len(audit_entries(n, "keyshare.release")) for n in grid.nodes
               if n.audit is not None)


def _run(tmp_path: Path, *, hedged: bool) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        network = SimNetwork(NetModel(latency_ms=10), seed=9)
        grid = await SimGrid.start(tmp_path, 8, seed=9, services=sharing_services,
                                   network=network, bootstrap="roster")
        loop = asyncio.get_running_loop()
        try:
            owner = grid.nodes[0]
            entry = await publish_one_series(owner, seed=9)
            i = bystander(grid, owner, entry)
            requester, host = grid.nodes[i], virtual_host(i)
            ref = SeriesRef(owner.node_id, entry.bundle_id)
            out: dict[str, Any] = {"instances": entry.instances}

            async def fetch(key: str, *, cold: bool) -> None:
                assert requester.keeper is not None and requester.client is not None
                if cold:                         # bench.wan_fed.prepare's cold process
                    await requester.keeper.stop()
                    await requester.client.close()
                released = _released(grid)
                dials = network.handshakes[host]
                sink = MemorySink()
                started = loop.time()
                result = await Retriever(requester, deadline_s=60).fetch(
                    ref, local_assertion(requester, **CLINICIAN), lambda _b: sink)
                out[key] = {
                    "ms": round((loop.time() - started) * 1e3, 1),
                    "source": result.source.split(":")[0], "instances": len(sink.instances),
                    "dials": network.handshakes[host] - dials,
                    "released": _released(grid) - released}

            dialer = original(Retriever(requester), ref)
            assert dialer is not None
            out["members"] = {m.node_id for m in dialer.members}
            out["holders"] = {*entry.share_holders, *entry.replica_holders} - {requester.node_id}
            if not hedged:
                Retriever._replica_path_dialer = lambda self, ref: None  # type: ignore[method-assign]
            await asyncio.sleep(5)               # the keeper's connections are open
            await fetch("running_up", cold=False)
            await fetch("cold_up", cold=True)
            requester.keeper.start()             # type: ignore[union-attr]
            await asyncio.sleep(5)
            await grid.kill(0)
            await asyncio.sleep(5)               # the keeper's redial of the owner fails
            await fetch("running_down", cold=False)
            await fetch("cold_down", cold=True)
            return out
        finally:
            await grid.stop()

    original = Retriever._replica_path_dialer
    try:
        return run_virtual(main())
    finally:
        Retriever._replica_path_dialer = original  # type: ignore[method-assign]


def test_cold_fetch_dials_the_replica_path_beside_the_owner(tmp_path: Path) -> None:
    with_hedge = _run(tmp_path / "hedged", hedged=True)
    without = _run(tmp_path / "plain", hedged=False)
    n = with_hedge["instances"]
    for got in (with_hedge, without):
        assert (got["running_up"]["source"], got["running_up"]["instances"]) == ("owner", n)
        assert (got["cold_up"]["source"], got["cold_up"]["instances"]) == ("owner", n)
        assert (got["cold_down"]["source"], got["cold_down"]["instances"]) == ("replica", n)
        assert (got["running_down"]["source"], got["running_down"]["instances"]) == ("replica", n)
    # a kept connection to the owner, or an owner known down: nothing dialled, hedge or not
    for key in ("running_up", "running_down"):
        assert with_hedge[key]["dials"] == without[key]["dials"] == 0, key
        assert with_hedge[key]["ms"] == without[key]["ms"], key
    # owner up, cold: the owner's connection plus one to each replica-path member, which
    # carry nothing: no key share is released, and the owner's answer is not delayed
    assert without["cold_up"]["dials"] == 1
    members = with_hedge["members"]
    assert with_hedge["holders"] <= members                  # where the shares and replica are
    assert with_hedge["cold_up"]["dials"] == 1 + len(members)
    assert with_hedge["cold_up"]["released"] == without["cold_up"]["released"] == 0
    assert with_hedge["cold_up"]["ms"] == without["cold_up"]["ms"]
    # owner down, cold: the replica path's handshakes (2 round trips, 40 ms) overlap the
    # owner's refused connect (1 round trip, 20 ms): it asks as soon as they are done, 5 ms
    # (the hedge delay) after it would have if it had known the owner was down
    assert without["cold_down"]["ms"] == 20 + 40 + 20        # refused, handshakes, request
    assert with_hedge["cold_down"]["ms"] == hedge.HEDGE_DELAY_S * 1e3 + 40 + 20
    assert with_hedge["cold_down"]["released"] >= 2 and without["cold_down"]["released"] >= 2
