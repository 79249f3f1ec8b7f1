"""The simulator: real nodes on loopback with injected faults, scored against ground truth."""

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
from sim.grid import GridError, SimGrid
from sim.link import LinkSpec, LinkSpecError, SimLink
from sim.report import Recall, SimReport, percentile
from sim.run import run_scenario
from sim.scenarios.common import SimOptions, SimOptionsError

REPORT_KEYS = {"scenario", "nodes", "nodes_down", "queries", "recall", "latency_ms", "refused",
               "seed"}


# -- pure parts -----------------------------------------------------------------------
def test_link_spec_refuses_impossible_networks() -> None:
    for bad in (dict(latency_ms=-1), dict(latency_ms=5, jitter_ms=10), dict(loss=1.0),
                dict(loss=-0.1)):
        with pytest.raises(LinkSpecError):
            LinkSpec(**bad)
    with pytest.raises(SimOptionsError, match="scenario"):
        SimOptions(scenario="flood")
    with pytest.raises(SimOptionsError, match="down"):
        SimOptions(down=1.0)


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
    doc = json.loads(SimReport("query", 4, 1, 9, extra={"dht": {"mean_hops": 1}}).to_json())
    assert REPORT_KEYS <= doc.keys() and doc["dht"] == {"mean_hops": 1}


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


# -- scenarios --------------------------------------------------------------------------
async def test_query_scenario_finds_everything_without_faults(tmp_path: Path) -> None:
    report = (await run_scenario(SimOptions(nodes=7, seed=11, queries=10), tmp_path)).to_dict()
    assert REPORT_KEYS <= report.keys()
    assert report["recall"] == 1.0 and report["nodes_down"] == 0 and report["queries"] == 10
    assert report["site_statuses"].keys() == {"ok"}
    assert report["dht"]["lookup_success"] == 1.0
    assert 1 <= report["sites_asked_mean"] < 7          # the DHT narrowed the fan-out


async def test_query_scenario_reports_down_sites_and_keeps_live_recall(tmp_path: Path) -> None:
    opts = SimOptions(nodes=8, seed=12, queries=6, down=0.25)
    report = (await run_scenario(opts, tmp_path)).to_dict()
    assert report["nodes_down"] == 2
    assert report["recall"] == 1.0
    assert report["down_site_statuses"].keys() == {"unreachable"}
    assert report["down_site_statuses"]["unreachable"] > 0


async def test_query_latency_grows_with_the_injected_rtt(tmp_path: Path) -> None:
    opts = SimOptions(nodes=6, seed=13, queries=6, latency_ms=40, jitter_ms=5)
    report = (await run_scenario(opts, tmp_path)).to_dict()
    assert report["recall"] == 1.0
    assert report["latency_ms"]["p50"] >= 80    # at least one round trip (DHT lookup)


async def test_lookup_scenario_finds_every_holder(tmp_path: Path) -> None:
    report = (await run_scenario(SimOptions("lookup", nodes=8, seed=14, queries=8),
                                 tmp_path)).to_dict()
    assert report["dht"]["lookup_success"] == 1.0 and report["recall"] == 1.0
    assert report["dht"]["mean_hops"] >= 1 and report["dht"]["rpcs_per_lookup"] >= 1
    assert report["sites_asked_excess_max"] <= 2
    assert report["sites_asked_mean"] >= report["sites_holding_mean"] >= 1


def test_cli_prints_a_json_report_and_refuses_bad_options(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "sim", "--nodes", "3", "--queries", "2", "--seed", "4",
           "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert REPORT_KEYS <= report.keys() and report["nodes"] == 3 and report["seed"] == 4
    bad = subprocess.run([sys.executable, "-m", "sim", "--loss", "1.5"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert bad.returncode == 2 and "loss" in bad.stderr


async def test_sharing_scenario_survives_owners_down_without_leaking_phi(tmp_path: Path) -> None:
    report = (await run_scenario(SimOptions("sharing", nodes=8, seed=15), tmp_path)).to_dict()
    assert report["nodes_down"] == 2 and report["bundles"] == report["series_planted"] == 4
    assert report["retrievals"] == 4 and report["retrieval_success"] == 1.0
    assert report["canary_files_at_owners"] > 0      # the scan does find planted PHI …
    assert report["phi_canary_hits"] == 0            # … and none of it left its site
    assert report["tamper_detected"] is True
    assert report["compression_ratio"] > 1.0
