"""A running node knows the owner is down before anyone fetches, and learns it is back.

Virtual time, in-memory network, real nodes (keeper, peer API, DHT, shares, replicas):
the requester's keeper keeps a connection to every member. When the owner goes down its
dials fail; a fetch then goes straight to the replica + key-share path without a connect
to the dead owner, long after the peer client's 5 s failed-connect memory lapsed. When
the owner comes back, a fetch whose replica path fails asks the owner after all, and
once the keeper has reached it again, fetches go to the owner first.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from node.net.keeper import KeeperSettings
from node.sharing.retrieve import OWNER_DOWN_MEMORY_S, Retriever, SeriesRef, local_assertion
from sim.grid import SimGrid
from sim.netmodel import NetModel
from sim.network import SimNetwork
from sim.scenarios.common import CLINICIAN
from sim.scenarios.sharing import MemorySink, sharing_services
from sim.vclock import run_virtual
from tests.sharing_support import bystander, publish_one_series


def test_keeper_knows_the_owner_is_down_and_back(tmp_path: Path) -> None:
    async def main() -> dict[str, object]:
        network = SimNetwork(NetModel(latency_ms=10), seed=9)
        grid = await SimGrid.start(tmp_path, 8, seed=9, services=sharing_services,
                                   network=network, bootstrap="roster")
        try:
            owner = grid.nodes[0]
            entry = await publish_one_series(owner, seed=9)
            requester = grid.nodes[bystander(grid, owner, entry)]
            ref = SeriesRef(owner.node_id, entry.bundle_id)
            out: dict[str, object] = {"instances": entry.instances}

            async def fetch(key: str) -> None:
                sink = MemorySink()
                result = await Retriever(requester, deadline_s=60).fetch(
                    ref, local_assertion(requester, **CLINICIAN), lambda _b: sink)
                out[key] = (result.source.split(":")[0], len(sink.instances), result.attempts)

            await asyncio.sleep(5)
            assert requester.keeper is not None and requester.keeper.warm(owner.node_id)
            await grid.kill(0)
            await asyncio.sleep(150)             # the keeper's redials fail, backing off
            # the client's 5 s failed-connect memory lapses between those redials; forget it
            # outright (and the pool) so only the keeper can know
            await requester.client.close()
            out["memory"] = requester.client.connect_failed_within(owner.node_id,
                                                                   OWNER_DOWN_MEMORY_S)
            dial_failures = requester.keeper.stats["dial_failures"]
            out["down_for"] = requester.keeper.down_for(owner.node_id)
            await fetch("down")
            # a failed connect since is the keeper's own redial, not the fetch's
            out["memory_after"] = (requester.client.connect_failed_within(
                owner.node_id, OWNER_DOWN_MEMORY_S) is None
                or requester.keeper.stats["dial_failures"] > dial_failures)
            await grid.revive(0)                 # back, but the keeper has not redialled yet
            out["down_before_fallback"] = requester.keeper.down_for(owner.node_id) is not None
            for node in grid.nodes:
                if node.node_id in entry.replica_holders:
                    await grid.kill(grid.index_of(node.node_id))
            await fetch("fallback")
            await asyncio.sleep(KeeperSettings().backoff_max_s)   # the next redial reaches it
            out["down_after_redial"] = requester.keeper.down_for(owner.node_id)
            await fetch("back")
            return out
        finally:
            await grid.stop()

    got = run_virtual(main())
    n = got["instances"]
    assert got["memory"] is None                          # the client's memory is gone …
    assert got["down_for"] is not None and float(got["down_for"]) > 100   # … the keeper knows
    source, count, attempts = got["down"]                 # type: ignore[misc]
    assert (source, count) == ("replica", n)
    assert len(attempts) == 1 and "keeper has not reached it" in attempts[0]
    assert "not asked first" in attempts[0]
    assert got["memory_after"] is True                    # the fetch did not dial the owner
    assert got["down_before_fallback"] is True
    source, count, attempts = got["fallback"]             # type: ignore[misc]
    assert (source, count) == ("owner", n)                # replicas gone: the owner after all
    assert any("no replica holder" in a for a in attempts)
    assert got["down_after_redial"] is None
    assert got["back"] == ("owner", n, ())


def test_a_fetch_by_series_uid_asks_the_owner_without_waiting_for_the_index(tmp_path: Path) -> None:
    """What the DICOMweb and DICOM gateways ask for (owner + keyed series UID): the owner is
    asked at once and the DHT lookup of the bundle id runs beside it, so the fetch takes
    no round trip more than one by bundle id (virtual time, 10 ms one way); with the
    owner down the lookup's bundle id leads to the replica path."""
    async def main() -> dict[str, object]:
        network = SimNetwork(NetModel(latency_ms=10), seed=4)
        grid = await SimGrid.start(tmp_path, 6, seed=4, services=sharing_services,
                                   network=network, bootstrap="roster")
        try:
            owner = grid.nodes[0]
            entry = await publish_one_series(owner, seed=4)
            requester = grid.nodes[5]
            await asyncio.sleep(5)                        # the keeper's connections are open
            loop = asyncio.get_running_loop()
            out: dict[str, object] = {}
            for key, ref in [("by_bundle", SeriesRef(owner.node_id, entry.bundle_id)),
                             ("by_uid", SeriesRef(owner.node_id,
                                                  keyed_series_uid=entry.keyed_series_uid))]:
                sink = MemorySink()
                started = loop.time()
                result = await Retriever(requester, deadline_s=60).fetch(
                    ref, local_assertion(requester, **CLINICIAN), lambda _b: sink)
                out[key] = (result.source, result.bundle_id == entry.bundle_id,
                            len(sink.instances), loop.time() - started)
            await grid.kill(0)
            sink = MemorySink()
            result = await Retriever(requester, deadline_s=60).fetch(
                SeriesRef(owner.node_id, keyed_series_uid=entry.keyed_series_uid),
                local_assertion(requester, **CLINICIAN), lambda _b: sink)
            out["down"] = (result.source.split(":")[0], result.bundle_id == entry.bundle_id,
                           len(sink.instances))
            out["instances"] = entry.instances
            return out
        finally:
            await grid.stop()

    got = run_virtual(main())
    n = got["instances"]
    source, same, count, by_bundle_s = got["by_bundle"]  # type: ignore[misc]
    assert (source, same, count) == ("owner", True, n)
    source, same, count, by_uid_s = got["by_uid"]        # type: ignore[misc]
    assert (source, same, count) == ("owner", True, n)
    assert by_uid_s <= by_bundle_s + 0.001                # no DHT round trip first (was +20 ms)
    assert got["down"] == ("replica", True, n)
