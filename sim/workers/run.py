"""``run_simulation`` for ``--workers W`` > 1: the same ``SimResult`` as one process."""

from __future__ import annotations

import time
from pathlib import Path

from sim.report import build_report
from sim.run import SimResult
from sim.workers.memory import own_peak_rss_mb
from sim.options import SimOptions
from sim.scenarios import load
from sim.workers.coordinator import host_figures, run_workers
from sim.workers.merge import lookup_figures


def run_partitioned(opts: SimOptions, directory: Path) -> SimResult:
    started = time.monotonic()
    run = run_workers(opts, directory, opts.workers)
    figures, samples, series = lookup_figures(run, opts.queries, opts.nodes)
    summary = str(load(opts.scenario).SUMMARY)
    host = host_figures(run, opts.nodes, time.monotonic() - started,
                        own_peak_rss_mb())
    return SimResult(build_report(opts.params(), summary, figures, samples, series), host,
                     samples)
