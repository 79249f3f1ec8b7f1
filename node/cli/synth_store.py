"""``medfed synth --metadata-only``: fill a stopped node's store for scale figures."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from .common import console, err, load_or_exit


def synth_metadata(config: Path | None, instances: int, seed: int) -> None:
    from ..store.db import MetadataStore, StoreError
    from ..synth.metadata import SynthStoreError, fill_store

    if config is None:
        err.print("[red]--metadata-only needs --config (the node whose store to fill)[/red]")
        raise typer.Exit(2)
    if instances < 1:
        err.print("[red]--instances must be at least 1[/red]")
        raise typer.Exit(2)
    cfg = load_or_exit(config)

    async def run():  # type: ignore[no-untyped-def]
        async with MetadataStore.for_config(cfg) as store:
            def progress(done: int) -> None:
                if done % 100_000 == 0:
                    console.print(f"  {done:,} instances")
            return await fill_store(store, instances, seed=seed, progress=progress)

    try:
        report = asyncio.run(run())
    except (StoreError, SynthStoreError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2)
    console.print(f"{report.instances:,} synthetic instances (metadata only, no pixel data) "
                  f"in {report.seconds:.1f} s ({report.rate:,.0f}/s): {report.patients:,} "
                  f"patients, {report.studies:,} studies, {report.series:,} series")
