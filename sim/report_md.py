"""report.md: the run for people — what was simulated, the figures, the plots."""

from __future__ import annotations

import json
from typing import Any

_SKIP = {"params", "samples", "series", "summary", "report_version"}


def _value(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, sort_keys=True)[:300] + "`"
    return str(v)


def render_markdown(doc: dict[str, Any], host: dict[str, Any], plots: list[str]) -> str:
    p = doc["params"]
    clock = "virtual time (deterministic)" if doc["virtual_time"] else "real time (--realtime)"
    net = (f"{p['latency_ms']:g} ± {p['jitter_ms']:g} ms one way" if p["regions"] == 1 else
           f"{p['regions']} regions, {p['latency_ms']:g} ms inside, "
           f"{p['between_low_ms']:g}–{p['between_high_ms']:g} ms between, ± {p['jitter_ms']:g} ms")
    lines = [f"# medfed sim — {doc['scenario']}", "", doc["summary"], "",
             f"- nodes: {doc['nodes']}, seed {doc['seed']}, {clock}",
             f"- network: {net}, loss {p['loss']:g}"
             + (f", {p['bandwidth_mbps']:g} Mbit/s" if p["bandwidth_mbps"] else ""),
             f"- host: {host['wall_s']} s wall, peak RSS {host['peak_rss_mb']} MB "
             f"({host['peak_rss_mb_per_node']} MB per node), load {host['load_average']}",
             f"- replay: `medfed sim --replay report.json`", "", "## Figures", "",
             "| figure | value |", "|---|---|"]
    for key in sorted(k for k in doc if k not in _SKIP):
        lines.append(f"| {key} | {_value(doc[key])} |")
    if doc.get("samples"):
        lines += ["", "## Latency samples (ms)", "", "| sample | count | p50 | p95 | p99 |",
                  "|---|---|---|---|---|"]
        for name, s in doc["samples"].items():
            lines.append(f"| {name} | {s['count']} | {s['p50']} | {s['p95']} | {s['p99']} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    lines += ["", "## Parameters", "", "```json", json.dumps(p, indent=2, sort_keys=True), "```",
              ""]
    return "\n".join(lines)
