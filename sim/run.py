"""Run one scenario (virtual time unless --realtime) and collect its report."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import tempfile
import time
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sim.context import NoProgress, Progress, SimContext
from sim.options import SimOptions
from sim.report import build_report
from sim.scenarios import load
from sim.vclock import run_virtual


WORKER_HOST_FIGURES = ("workers", "peak_rss_mb_per_worker", "windows", "phases_s")   # --workers > 1


@dataclass
class SimResult:
    report: dict[str, Any]              # deterministic in virtual time (report.json)
    host: dict[str, Any]                # wall time, memory (host.json)
    samples: dict[str, list[float]]     # raw samples, for the plots

    def merged(self) -> dict[str, Any]:
        """report.json with the host figures at top level (what --json prints)."""
        return {**self.report, "wall_s": self.host["wall_s"],
                "peak_rss_mb": self.host["peak_rss_mb"],
                "peak_rss_mb_per_node": self.host["peak_rss_mb_per_node"],
                **{k: self.host[k] for k in WORKER_HOST_FIGURES if k in self.host}}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


async def _scenario(opts: SimOptions, directory: Path, progress: Progress
                    ) -> tuple[str, dict[str, Any], SimContext]:
    module = load(opts.scenario)
    ctx = SimContext.create(opts, directory, progress)
    figures = await module.run(ctx)
    return str(module.SUMMARY), figures, ctx


def run_simulation(opts: SimOptions, directory: Path | None = None,
                   progress: Progress | None = None) -> SimResult:
    """Every node's data lives under ``directory`` (default: a temporary folder that is
    removed afterwards, so a run leaves nothing behind)."""
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="medfed-sim-") as tmp:
            return run_simulation(opts, Path(tmp), progress)
    directory.mkdir(parents=True, exist_ok=True)
    if opts.workers > 1:
        from sim.workers.run import run_partitioned
        return run_partitioned(opts, directory)
    started = time.monotonic()
    coro = _scenario(opts, directory, progress or NoProgress())
    with fewer_gc_passes():
        summary, figures, ctx = asyncio.run(coro) if opts.realtime else run_virtual(coro)
    wall = time.monotonic() - started
    rss = peak_rss_mb()
    host = {"wall_s": round(wall, 2), "peak_rss_mb": round(rss, 1),
            "peak_rss_mb_per_node": round(rss / opts.nodes, 3), "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}
    return SimResult(build_report(opts.params(), summary, figures, ctx.samples, ctx.series),
                     host, ctx.samples)


# Cyclic-GC thresholds while a simulation runs (defaults 700, 10, 10). Hundreds of nodes
# allocate millions of short-lived objects (datagrams, futures, timers) beside a large
# long-lived heap; at the defaults a 1,000-node lookup run spent 99 s of 854 in the
# collector (62 full passes of ~0.8 s), at these 300 nodes spent 1.2 s instead of 3.4.
SIM_GC_THRESHOLDS = (20_000, 20, 20)


@contextlib.contextmanager
def fewer_gc_passes() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(*SIM_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def quiet_logs() -> None:
    """Hundreds of nodes log the same expected warnings (a killed peer is unreachable);
    the report says what happened, so only errors reach the terminal."""
    for name in ("medfed", "node", "aiohttp", "sim"):
        logging.getLogger(name).setLevel(logging.ERROR)
