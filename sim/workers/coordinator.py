"""The parent of ``medfed sim --workers W``: builds the federation, runs the windows.

Each round: t = the earliest pending event anywhere (a worker's next timer, a datagram
in transit, or now if a step starts), every worker runs to t + L, and the datagrams
sent to other workers in that window are routed to their owners for the next round.
A step is complete at the first barrier where every worker reports its part done; the
next step starts there. Every wait on a worker has a deadline (``WorkerError``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.net.testbed import build_federation
from sim.grid import PEER_PORT, seeded_identity, seeded_secrets, site_name, virtual_host
from sim.options import SimOptions
from sim.workers.lookahead import window_s
from sim.workers.partition import host_owners
from sim.workers.plan import Step, lookup_plan
from sim.workers.process import WorkerError, WorkerProcess

START_TIMEOUT_S = 1800.0     # a worker starting its nodes (1,000 nodes: minutes)
WINDOW_TIMEOUT_S = 600.0     # one window's events (a whole stage publishing at once)


@dataclass
class PartitionedRun:
    """What the workers measured: each step's results, and the host figures."""

    steps: list[Step]
    results: list[list[dict[str, Any]]] = field(default_factory=list)
    windows: int = 0
    virtual_s: float = 0.0
    phases_s: dict[str, float] = field(default_factory=dict)   # wall seconds per phase
    workers: list[dict[str, Any]] = field(default_factory=list)


def build(directory: Path, opts: SimOptions) -> None:
    """Every node's folder: the same CA and admissions as ``sim.grid`` makes."""
    build_federation(directory, [site_name(i) for i in range(opts.nodes)],
                     identity_for=lambda i: seeded_identity(opts.seed, i),
                     address_for=lambda i: f"{virtual_host(i)}:{PEER_PORT}",
                     secrets=seeded_secrets(opts.seed))


def run_workers(opts: SimOptions, directory: Path, workers: int,
                on_window: Callable[[list[WorkerProcess], int], None] | None = None
                ) -> PartitionedRun:
    """Run ``opts``'s scenario on ``workers`` processes (``on_window``: called after
    every barrier, e.g. by a test that kills a worker)."""
    if workers < 1:
        raise WorkerError("--workers must be >= 1")
    width = window_s(opts.net_model())
    steps = lookup_plan(opts)
    run = PartitionedRun(steps)
    clock = time.monotonic()
    build(directory, opts)
    run.phases_s["build_federation"] = round(time.monotonic() - clock, 2)
    procs: list[WorkerProcess] = []
    try:
        for k in range(workers):
            procs.append(WorkerProcess(k, directory))
            procs[-1].send({"params": opts.params(), "directory": str(directory), "index": k,
                            "workers": workers}, WINDOW_TIMEOUT_S)
        ready = [p.receive(START_TIMEOUT_S) for p in procs]
        started = time.monotonic() - clock - run.phases_s["build_federation"]
        run.phases_s["start_nodes"] = round(started, 2)
        clock = time.monotonic()
        _windows(procs, ready, steps, width, host_owners(opts.nodes, workers), run, on_window)
        run.phases_s["windows"] = round(time.monotonic() - clock, 2)
        for p in procs:
            p.send({"finish": True}, WINDOW_TIMEOUT_S)
        run.workers = [p.receive(WINDOW_TIMEOUT_S) for p in procs]
        return run
    finally:
        for p in procs:
            p.stop()


def _windows(procs: list[WorkerProcess], ready: list[dict[str, Any]], steps: list[Step],
             width: float, owners: dict[str, int], run: PartitionedRun,
             on_window: Callable[[list[WorkerProcess], int], None] | None) -> None:
    now = max(float(r["now"]) for r in ready)
    nexts: list[float | None] = [r["next"] for r in ready]
    inbox: list[list[list[Any]]] = [[] for _ in procs]
    current = 0
    start: Step | None = steps[0] if steps else None
    gathered: list[dict[str, Any]] = []
    while current < len(steps):
        pending = [n for n in nexts if n is not None] + [m[0] for box in inbox for m in box]
        if start is None and not pending:
            raise WorkerError(f"no events left anywhere but step {current} "
                              f"({steps[current].op}) has not finished")
        t = now if start is not None else max(now, min(pending))
        until = t + width
        for k, p in enumerate(procs):
            p.send({"until": until, "inbox": inbox[k],
                    "step": start.to_doc() if start is not None else None}, WINDOW_TIMEOUT_S)
        inbox = [[] for _ in procs]
        replies = [p.receive(WINDOW_TIMEOUT_S) for p in procs]
        now, start = until, None
        run.windows += 1
        for k, reply in enumerate(replies):
            for wire in reply["outbox"]:
                inbox[owners[wire[3]]].append(wire)
            if reply.get("error"):
                raise WorkerError(f"worker {k} failed step {current} ({steps[current].op}): "
                                  f"{reply['error']}")
            gathered += reply.get("results", [])
        nexts = [r["next"] for r in replies]
        if on_window is not None:
            on_window(procs, run.windows)
        if all(r["done"] for r in replies):
            run.results.append(gathered)
            gathered = []
            current += 1
            start = steps[current] if current < len(steps) else None
    run.virtual_s = now


def host_figures(run: PartitionedRun, nodes: int, wall_s: float, parent_rss_mb: float
                 ) -> dict[str, Any]:
    per_worker = [float(w["peak_rss_mb"]) for w in run.workers]
    total = sum(per_worker) + parent_rss_mb
    return {"wall_s": round(wall_s, 2), "peak_rss_mb": round(total, 1),
            "peak_rss_mb_per_node": round(total / nodes, 3),
            "peak_rss_mb_per_worker": per_worker, "parent_peak_rss_mb": round(parent_rss_mb, 1),
            "workers": len(run.workers), "windows": run.windows, "phases_s": run.phases_s,
            "cpu_s_per_worker": [float(w["cpu_s"]) for w in run.workers],
            "streams_between_workers": sum(int(w["streams_between_workers"])
                                           for w in run.workers),
            "cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}

