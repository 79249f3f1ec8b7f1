"""``--workers W``: one federation split across processes, synchronised in virtual time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sim.grid import join_waves
from sim.netmodel import NetModel
from sim.options import SimOptions, SimOptionsError
from sim.report import to_json
from sim.run import run_simulation
from sim.workers.coordinator import run_workers
from sim.workers.lookahead import min_one_way_s
from sim.workers.plan import lookup_plan
from sim.workers.process import WorkerError, WorkerProcess

OPTS = SimOptions("lookup", nodes=16, seed=3, queries=8, down=0.25)

_IN_ONE_PROCESS = """
import json, sys
from sim.options import SimOptions
from sim.run import run_simulation
print(json.dumps(run_simulation(SimOptions.from_params(json.loads(sys.argv[1]))).report))
"""


def _one_process(opts: SimOptions) -> dict:
    """The same scenario in one process, in a fresh interpreter as ``medfed sim`` runs it."""
    done = subprocess.run([sys.executable, "-c", _IN_ONE_PROCESS, json.dumps(opts.params())],
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _logical(report: dict) -> dict:
    """Everything but latencies (which follow the moments steps start: the next barrier
    with workers, the moment the previous one ended in one process)."""
    return {"lookups": report["lookups"], "nodes_down": report["nodes_down"],
            "stages": [(s["nodes"], s["lookup_success"], s["mean_hops"], s["p99_hops"],
                        s["rpcs_per_lookup"]) for s in report["stages"]],
            "dht": report["dht"], "dht_with_down": report["dht_with_down"]}


def test_two_workers_find_every_record_as_one_process_does(tmp_path: Path) -> None:
    two = run_simulation(replace(OPTS, workers=2), tmp_path / "a")
    again = run_simulation(replace(OPTS, workers=2), tmp_path / "b")
    assert to_json(two.report) == to_json(again.report)          # same seed, same W
    one = _one_process(OPTS)
    assert _logical(two.report) == _logical(one)
    assert _logical(one)["stages"] == [(8, 1.0, 1.0, 1.0, 7.0), (16, 1.0, 1.0, 1.0, 8.0)]
    assert one["dht_with_down"]["lookup_success"] == 1.0 and one["nodes_down"] == 4
    assert two.report["params"]["workers"] == 2 and two.host["workers"] == 2
    # peer-API connections (roster anti-entropy, warm peers) cross between the workers
    assert two.host["streams_between_workers"] > 0
    assert len(two.host["peak_rss_mb_per_worker"]) == 2 and two.host["windows"] > 0


def test_a_worker_that_dies_is_named_and_nothing_hangs(tmp_path: Path) -> None:
    def kill_worker_1(procs: list[WorkerProcess], window: int) -> None:
        if window == 5:
            os.kill(procs[1].pid, signal.SIGKILL)

    with pytest.raises(WorkerError, match=r"worker 1 \(pid \d+\) exited with code -9"):
        run_workers(replace(OPTS, workers=2), tmp_path, 2, on_window=kill_worker_1)


def test_workers_refuse_a_network_without_lookahead() -> None:
    with pytest.raises(SimOptionsError, match="minimum one-way latency > 0"):
        SimOptions("lookup", nodes=8, workers=2, latency_ms=10, jitter_ms=10)
    with pytest.raises(SimOptionsError, match="lookup scenario"):
        SimOptions("query", nodes=8, workers=2)
    with pytest.raises(SimOptionsError, match="workers must be from 1"):
        SimOptions("lookup", nodes=8, workers=9)
    assert min_one_way_s(NetModel(latency_ms=20, jitter_ms=10)) == 0.01
    assert min_one_way_s(NetModel.regional(4, inside_ms=50, between_ms=(30, 90),
                                           jitter_ms=5)) == 0.025


def test_the_plan_makes_the_one_process_scenario_choices() -> None:
    steps = lookup_plan(OPTS)
    joins = [s for s in steps if s.op == "join"]
    assert [s.nodes for s in joins] == [tuple(range(a, b)) for a, b in join_waves(1, 16)]
    assert all(len(s.via) == len(s.nodes) for s in joins)
    assert all(set(via) <= set(range(s.nodes[0])) and len(via) == min(4, s.nodes[0])
               for s in joins for via in s.via)
    publishes = [s for s in steps if s.op == "publish"]
    assert [s.nodes for s in publishes] == [tuple(range(8)), tuple(range(16))]
    kills = [s for s in steps if s.op == "kill"]
    assert len(kills) == 1 and len(kills[0].nodes) == 4
    after = [s for s in steps[steps.index(kills[0]):] if s.op == "lookup"]
    assert len(after) == 8 and not set(s.nodes[0] for s in after) & set(kills[0].nodes)
