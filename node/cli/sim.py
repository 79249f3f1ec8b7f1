"""`medfed sim`: run N full nodes in this process under a simulated network; print a report."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import console, err


def sim(nodes: int = typer.Option(20, "--nodes", help="Sites in the simulated federation."),
        seed: int = typer.Option(1, "--seed", help="Seed for data, faults and queries."),
        latency_ms: float = typer.Option(0.0, "--latency-ms", help="Mean one-way delay."),
        jitter_ms: float = typer.Option(0.0, "--jitter-ms", help="One-way delay varies ± this."),
        loss: float = typer.Option(0.0, "--loss", help="Chance each message leg is lost."),
        down: float = typer.Option(0.0, "--down", help="Fraction of sites taken down."),
        scenario: str = typer.Option("query", "--scenario", help="query | lookup | sharing | similarity"),
        queries: int = typer.Option(30, "--queries", help="Queries / lookups / retrievals."),
        broadcast: bool = typer.Option(False, "--broadcast",
                                       help="query: ask every site (no DHT planning)."),
        data_dir: Optional[Path] = typer.Option(None, "--dir",
                                                help="Keep the nodes' folders here "
                                                     "(default: a temporary folder)."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Simulate a federation: real nodes on loopback, injected latency / loss / failures."""
    from sim.run import quiet_logs, run_scenario
    from sim.scenarios.common import SimOptions, SimOptionsError
    from sim.link import LinkSpecError

    try:
        opts = SimOptions(scenario, nodes, seed, latency_ms, jitter_ms, loss, down, queries,
                          broadcast=broadcast)
    except (SimOptionsError, LinkSpecError) as exc:
        err.print(f"[red]bad simulator option:[/red] {exc}")
        raise typer.Exit(2)
    quiet_logs()
    report = asyncio.run(run_scenario(opts, data_dir))
    if as_json:
        print(report.to_json())
        return
    table = Table(title=f"medfed sim — {scenario}, {nodes} nodes")
    table.add_column("figure")
    table.add_column("value")
    for key, value in sorted(report.to_dict().items()):
        table.add_row(key, str(value))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("sim")(sim)
