"""`medfed sim`: a whole federation in this process, in virtual time; a report people can read."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from .common import console, err

PHASE_WIDTH = 40


def _same_hash_seed() -> None:
    """Python randomises str/bytes hashing per process, and set order follows it; a
    virtual-time run is only reproducible across processes with a fixed seed, so the
    command re-executes itself once with PYTHONHASHSEED=0."""
    if os.environ.get("PYTHONHASHSEED") == "0":
        return
    argv = sys.argv
    if argv and argv[0].endswith(os.path.join("sim", "__main__.py")):
        args = argv[1:]
        command = [sys.executable, "-m", "sim"]
    elif "sim" in argv[1:]:
        args = argv[argv.index("sim", 1) + 1:]
        command = [sys.executable, "-m", "node.cli", "sim"]
    else:
        return   # called in-process (tests): same process, same hash order
    os.execve(sys.executable, command + args, {**os.environ, "PYTHONHASHSEED": "0"})


class RichProgress:
    """The progress bar: one task per phase of the scenario."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._task: Any = None

    def phase(self, description: str, total: float) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description[:PHASE_WIDTH], total=max(total, 1))

    def advance(self, amount: float = 1.0) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)


def _between(text: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split("-", 1))
    except ValueError as exc:
        raise typer.BadParameter("give the range as LOW-HIGH milliseconds, e.g. 40-120") from exc
    return low, high


def _run(opts: Any, data_dir: Optional[Path], show_progress: bool) -> Any:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)
    from sim.run import run_simulation
    if not show_progress:
        return run_simulation(opts, data_dir)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        return run_simulation(opts, data_dir, RichProgress(bar))


def _replay(path: Path, data_dir: Optional[Path], show_progress: bool) -> None:
    from sim.options import SimOptions, SimOptionsError
    from sim.report import differences, figures_of
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        opts = SimOptions.from_params(old["params"])
    except (OSError, ValueError, KeyError, TypeError, SimOptionsError) as exc:
        err.print(f"[red]cannot replay {path}:[/red] {exc}")
        raise typer.Exit(2)
    result = _run(opts, data_dir, show_progress)
    diffs = differences(figures_of(old), figures_of(result.report))
    if not diffs:
        console.print(f"replay of {path}: every figure matches "
                      f"({len(json.dumps(figures_of(old)))} bytes of report compared)")
        return
    console.print(f"[red]replay of {path}: {len(diffs)} figure(s) differ[/red]")
    for line in diffs[:40]:
        console.print(f"  {line}")
    raise typer.Exit(1)


def sim(nodes: int = typer.Option(20, "--nodes", help="Sites in the simulated federation."),
        scenario: str = typer.Option("query", "--scenario",
                                     help="lookup | query | churn | durability | adversary | "
                                          "sharing (one module each in sim/scenarios/)."),
        seed: int = typer.Option(1, "--seed", help="Seed for ids, data, faults and queries."),
        latency_ms: float = typer.Option(20.0, "--latency-ms",
                                         help="One-way delay (inside a region)."),
        jitter_ms: float = typer.Option(10.0, "--jitter-ms", help="One-way delay varies ± this."),
        loss: float = typer.Option(0.0, "--loss", help="Chance each datagram is lost."),
        regions: int = typer.Option(1, "--regions", help="Regional clusters of sites."),
        between: str = typer.Option("40-120", "--between-ms",
                                    help="One-way delay between two regions: LOW-HIGH ms."),
        bandwidth: float = typer.Option(0.0, "--bandwidth-mbps",
                                        help="Per-link bandwidth (0 = unlimited)."),
        handshake_rtts: int = typer.Option(2, "--handshake-rtts",
                                           help="Round trips to open a peer connection "
                                                "(TCP + TLS 1.3 = 2; 0 = warm connections)."),
        warm_peers: int = typer.Option(32, "--warm-peers",
                                       help="Members each site keeps warm connections to "
                                            "(federation.warm_peers; 0 = none)."),
        down: float = typer.Option(0.0, "--down", help="Fraction of sites taken down."),
        queries: int = typer.Option(30, "--queries", help="Queries / lookups / retrievals."),
        churn: float = typer.Option(0.1, "--churn-per-hour",
                                    help="churn: fraction of sites leaving per hour."),
        session: float = typer.Option(1800.0, "--session-mean-s",
                                      help="churn: mean time a departed site stays away."),
        duration: float = typer.Option(3600.0, "--duration-s",
                                       help="churn / durability: simulated seconds."),
        repair: bool = typer.Option(True, "--repair/--no-repair",
                                    help="durability: owners repair replicas and shares."),
        broadcast: bool = typer.Option(False, "--broadcast",
                                       help="query: ask every site (no DHT planning)."),
        realtime: bool = typer.Option(False, "--realtime",
                                      help="Real sockets, TLS and wall clock (figures then "
                                           "depend on the host)."),
        workers: int = typer.Option(1, "--workers",
                                     help="Processes sharing the nodes, synchronised in "
                                          "virtual time (lookup scenario only, > 1)."),
        report_dir: Optional[Path] = typer.Option(None, "--report",
                                                  help="Write report.md, report.json, host.json "
                                                       "and PNG plots here."),
        replay: Optional[Path] = typer.Option(None, "--replay",
                                              help="Rerun the run a report.json describes and "
                                                   "say whether every figure matches."),
        data_dir: Optional[Path] = typer.Option(None, "--dir",
                                                help="Keep the nodes' folders here "
                                                     "(default: a temporary folder)."),
        as_json: bool = typer.Option(False, "--json",
                                     help="Print report.json (plus wall_s, peak_rss_mb).")) -> None:
    """Simulate a federation: full nodes over an in-memory network in virtual time
    (deterministic), with latency, loss, churn, failures and adversaries; report."""
    from sim.options import SimOptions, SimOptionsError
    from sim.run import quiet_logs
    if not realtime:
        _same_hash_seed()
    quiet_logs()
    show_progress = not as_json and sys.stderr.isatty()
    if replay is not None:
        _replay(replay, data_dir, show_progress)
        return
    low, high = _between(between)
    try:
        opts = SimOptions(scenario=scenario, nodes=nodes, seed=seed, latency_ms=latency_ms,
                          jitter_ms=jitter_ms, loss=loss, regions=regions,
                          between_low_ms=low, between_high_ms=high, bandwidth_mbps=bandwidth,
                          handshake_rtts=handshake_rtts, warm_peers=warm_peers,
                          down=down, queries=queries, churn_per_hour=churn,
                          session_mean_s=session, duration_s=duration, repair=repair,
                          broadcast=broadcast, realtime=realtime, workers=workers)
    except SimOptionsError as exc:
        err.print(f"[red]bad simulator option:[/red] {exc}")
        raise typer.Exit(2)
    result = _run(opts, data_dir, show_progress)
    if report_dir is not None:
        from sim.report import write_report
        written = write_report(report_dir, result.report, result.host, result.samples)
        if not as_json:
            console.print(f"report: {', '.join(str(p) for p in written)}")
    if as_json:
        print(json.dumps(result.merged(), indent=2, sort_keys=True))
        return
    _table(result)


def _table(result: Any) -> None:
    from rich.table import Table
    doc = result.merged()
    table = Table(title=f"medfed sim — {doc['scenario']}, {doc['nodes']} nodes, seed {doc['seed']}")
    table.add_column("figure")
    table.add_column("value")
    for key, value in sorted(doc.items()):
        if key not in ("params", "series", "summary"):
            table.add_row(key, json.dumps(value, sort_keys=True)[:120])
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("sim")(sim)
