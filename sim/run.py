"""Run one scenario in a fresh temporary folder and return its report."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from sim.report import SimReport
from sim.scenarios.common import SimOptions


async def run_scenario(opts: SimOptions, directory: Path | None = None) -> SimReport:
    """Every node's data lives under ``directory`` (default: a temporary folder that is
    removed afterwards, so a run leaves nothing behind)."""
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="medfed-sim-") as tmp:
            return await run_scenario(opts, Path(tmp))
    directory.mkdir(parents=True, exist_ok=True)
    if opts.scenario == "query":
        from sim.scenarios.query import run_query
        return await run_query(directory, opts)
    if opts.scenario == "similarity":
        from sim.scenarios.similarity import run_similarity
        return await run_similarity(directory, opts)
    if opts.scenario == "lookup":
        from sim.scenarios.lookup import run_lookup
        return await run_lookup(directory, opts)
    from sim.scenarios.sharing import run_sharing
    return await run_sharing(directory, opts)


def quiet_logs() -> None:
    """Hundreds of nodes log the same expected warnings (a killed peer is unreachable);
    the report says what happened, so only errors reach the terminal."""
    logging.getLogger("medfed").setLevel(logging.ERROR)
    logging.getLogger("node").setLevel(logging.ERROR)
    logging.getLogger("aiohttp").setLevel(logging.ERROR)
