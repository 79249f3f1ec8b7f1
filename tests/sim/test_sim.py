"""The simulator's real-time grid (loopback sockets, mTLS, injected link delays) and its pure parts."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.net.errors import PeerUnreachable
from node.store.ingest_local import LocalIngestError, ingest_dataset
from node.synth.generate import iter_datasets
from sim.data import ground_truth, plan_layout, plant
from sim.grid import JOIN_WAVE_FRACTION, GridError, SimGrid, join_waves
from sim.link import LinkSpec, LinkSpecError, SimLink
from sim.options import SimOptions, SimOptionsError
from sim.report import Recall, build_report, differences, percentile, to_json


# -- pure parts -----------------------------------------------------------------------
def test_nodes_join_in_logarithmically_many_waves_through_earlier_nodes() -> None:
    """One join after another made building N nodes last O(N) virtual time, with every
    started node's periodic work running meanwhile (O(N²)); waves grow with the DHT."""
    for first, end in ((1, 1000), (5, 37), (300, 301)):
        waves = join_waves(first, end)
        assert [w[0] for w in waves][0] == first and waves[-1][1] == end
        assert all(a[1] == b[0] for a, b in zip(waves, waves[1:]))          # contiguous
        assert all(stop - start <= max(1, start // JOIN_WAVE_FRACTION) for start, stop in waves)
    sizes = {n: len(join_waves(1, n)) for n in (1000, 8000)}
    assert sizes[1000] < 50
    assert sizes[8000] - sizes[1000] <= 3 * 4    # 3 doublings: a few waves each, not 7,000
    assert join_waves(3, 3) == []


def test_link_spec_refuses_impossible_networks() -> None:
    for bad in (dict(latency_ms=-1), dict(latency_ms=5, jitter_ms=10), dict(loss=1.0),
                dict(loss=-0.1)):
        with pytest.raises(LinkSpecError):
            LinkSpec(**bad)
    with pytest.raises(SimOptionsError, match="scenario"):
        SimOptions(scenario="flood")
    with pytest.raises(SimOptionsError, match="down"):
        SimOptions(down=1.0)
    with pytest.raises(SimOptionsError, match="jitter"):
        SimOptions(latency_ms=5, jitter_ms=10)
    with pytest.raises(SimOptionsError, match="unknown"):
        SimOptions.from_params({"nodes": 3, "colour": "red"})


def test_link_delays_within_jitter_and_loses_about_the_asked_share() -> None:
    link = SimLink(LinkSpec(20, 5, 0.2), random.Random(3))
    plans = [link.plan(("127.0.0.1", 1), ("127.0.0.1", 2), 100) for _ in range(4000)]
    delays = [p for p in plans if p is not None]
    assert all(0.015 <= d <= 0.025 for d in delays)
    assert 0.17 < 1 - len(delays) / len(plans) < 0.23
    assert link.lost == len(plans) - len(delays)


def test_percentiles_are_observed_values_and_recall_counts_pairs() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile([], 50)) == (50, 99, 0)
    assert percentile([7.0], 99) == 7.0
    recall = Recall()
    recall.add({(1, "a"), (2, "a")}, {(1, "a"), (3, "b")})
    recall.add(set(), {(4, "c")})
    assert recall.value == 0.5


def test_report_rounds_figures_and_names_every_difference() -> None:
    params = SimOptions("lookup", nodes=4, seed=9).params()
    doc = build_report(params, "s", {"dht": {"mean_hops": 1.0000004}}, {"a_ms": [1.0, 2.0]},
                       {"c": [[1, 2.123456]]})
    assert doc["dht"] == {"mean_hops": 1.0} and doc["params"] == params
    assert doc["samples"]["a_ms"]["count"] == 2 and doc["series"]["c"] == [[1, 2.1235]]
    again = json.loads(to_json(doc))
    assert differences(doc, again) == []
    again["dht"]["mean_hops"] = 2.0
    del again["seed"]
    assert differences(doc, again) == ["dht.mean_hops: 1.0 -> 2.0", "seed: only in the report"]


def test_layout_shares_patients_between_sites_deterministically() -> None:
    layout = plan_layout(10, seed=4)
    assert layout == plan_layout(10, seed=4) and layout != plan_layout(10, seed=5)
    truth = ground_truth(layout, 4, b"k" * 32)
    shared = truth.shared_pseudonyms()
    assert len(shared) >= 3
    assert all(len(truth.sites_with_patient(p)) >= 2 for p in shared)
    assert {s for s, _ in truth.expected(psn=shared[0])} == truth.sites_with_patient(shared[0])
    assert truth.expected(sites=[]) == set()


# -- edges: grid, link on the wire, planting --------------------------------------------
async def test_grid_kill_revive_and_corrupt(tmp_path: Path) -> None:
    grid = await SimGrid.start(tmp_path, 3, seed=2)
    try:
        a, b = grid.nodes[0], grid.nodes[1]
        member = a.membership.roster.member(b.node_id)
        assert await a.client.call(member, "GET", "/v1/roster", timeout=5)
        await grid.kill(1)
        assert grid.up == [0, 2]
        with pytest.raises(PeerUnreachable):
            await a.client.call(member, "GET", "/v1/roster", timeout=5)
        with pytest.raises(GridError, match="already down"):
            await grid.kill(1)
        revived = await grid.revive(1)
        assert revived.node_id == b.node_id and grid.up == [0, 1, 2]
        assert await a.client.call(member, "GET", "/v1/roster", timeout=5)
        await revived.dht.publish(b"r" * 32, 2)
        found = await grid.nodes[2].dht.get(b"r" * 32)
        assert [r.publisher.hex() for r in found.records] == [revived.node_id]
        layout = plan_layout(3, seed=2)
        await plant(dict(enumerate(grid.nodes)), layout, 2)
        changed = grid.corrupt(0)
        with pytest.raises(GridError, match="no file"):
            grid.corrupt(0, "*.nothing")
        assert changed.is_file() and changed.is_relative_to(grid.nodes[0].cfg.data_dir)
    finally:
        await grid.stop()


async def test_peer_calls_pay_the_injected_latency_and_loss(tmp_path: Path) -> None:
    grid = await SimGrid.start(tmp_path, 2, seed=3, link=LinkSpec(latency_ms=40))
    try:
        a, b = grid.nodes
        member = a.membership.roster.member(b.node_id)
        started = time.monotonic()
        await a.client.call(member, "GET", "/v1/roster", timeout=5)
        assert time.monotonic() - started >= 0.079   # request leg + answer leg
        grid.set_link(LinkSpec(loss=0.95))
        failures = 0
        for _ in range(10):
            try:
                await a.client.call(member, "GET", "/v1/roster", timeout=5)
            except PeerUnreachable:
                failures += 1
        assert failures >= 8
        grid.set_link(LinkSpec())
        assert a.client.link is None and a.dht.link is None
    finally:
        await grid.stop()


async def test_plant_stores_ground_truth_and_refuses_bad_instances(tmp_path: Path) -> None:
    grid = await SimGrid.start(tmp_path, 3, seed=5)
    try:
        layout = plan_layout(3, seed=5, own=1)
        stored = await plant(dict(enumerate(grid.nodes)), layout, 5)
        assert stored == len(layout)
        for i, node in enumerate(grid.nodes):
            assert (await node.store.counts()).series == sum(p.site == i for p in layout)
        node = grid.nodes[0]
        before = await node.store.counts()
        ds = next(iter_datasets(patients=1, series=1, slices=1, rows=16, cols=16, seed=99))
        del ds.SOPInstanceUID
        with pytest.raises(LocalIngestError, match="refused"):
            await ingest_dataset(node.store, node.files, ds)
        assert await node.store.counts() == before
    finally:
        await grid.stop()


