"""The workers' results as the lookup scenario's figures (the same report as one process)."""

from __future__ import annotations

from typing import Any

from sim.report import DhtFigures
from sim.scenarios.lookup import down_figures, stage_points, stage_row, summary
from sim.workers.plan import DOWN
from sim.workers.coordinator import PartitionedRun


def lookup_figures(run: PartitionedRun, queries: int, nodes: int
                   ) -> tuple[dict[str, Any], dict[str, list[float]], dict[str, list[list[float]]]]:
    """(figures, samples, series) in plan order: lookups are grouped by the stage (or
    the nodes-down measurement) they belong to."""
    measured: dict[str, tuple[DhtFigures, list[float]]] = {}
    killed = 0
    for step, results in zip(run.steps, run.results):
        if step.op == "kill":
            killed = len(step.nodes)
        if step.op != "lookup":
            continue
        if len(results) != 1:
            raise RuntimeError(f"lookup step from node {step.nodes[0]} gave {len(results)} results")
        dht, latencies = measured.setdefault(step.label, (DhtFigures(), []))
        r = results[0]
        dht.add(bool(r["ok"]), float(r["hops"]), float(r["rpcs"]))
        latencies.append(float(r["ms"]))
    rows: list[dict[str, Any]] = []
    samples: dict[str, list[float]] = {}
    series: dict[str, list[list[float]]] = {}
    for label, (dht, latencies) in measured.items():
        if label == DOWN:
            continue
        row = stage_row(int(label), dht, latencies)
        rows.append(row)
        for name, x, y in stage_points(row):
            series.setdefault(name, []).append([x, y])
        if int(label) == nodes:
            samples["lookup_ms"] = latencies
    figures = summary(queries, nodes, rows)
    if DOWN in measured:
        dht, latencies = measured[DOWN]
        samples["lookup_with_down_ms"] = latencies
        figures.update(down_figures(killed, dht, latencies))
    return figures, samples, series
