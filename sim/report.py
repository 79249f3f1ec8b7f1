"""The simulator's report: figures (pure), then report.json, report.md and PNG plots.

``report.json`` holds every figure of the simulated run plus the exact parameters and
seed; in virtual time it is a deterministic function of them, byte for byte, so
``--replay`` can compare it exactly. What depends on the host (wall time, peak memory)
goes to ``host.json`` beside it and is merged into ``--json`` output.
Percentiles use the nearest-rank method so p99 of a small sample is a value that was
actually observed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPORT_VERSION = 1


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def latency_summary(values_ms: Sequence[float]) -> dict[str, float]:
    return {f"p{q}": round(percentile(values_ms, q), 2) for q in (50, 95, 99)}


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


@dataclass
class Recall:
    """Found vs expected (site, patient) pairs, summed over queries."""

    expected: int = 0
    found: int = 0

    def add(self, expected: set[Any], got: set[Any]) -> None:
        self.expected += len(expected)
        self.found += len(expected & got)

    @property
    def value(self) -> float:
        return 1.0 if self.expected == 0 else self.found / self.expected


@dataclass
class DhtFigures:
    lookups: int = 0
    successes: int = 0
    hops: list[float] = field(default_factory=list)
    rpcs: list[float] = field(default_factory=list)

    def add(self, ok: bool, hops: float, rpcs: float) -> None:
        self.lookups += 1
        self.successes += int(ok)
        self.hops.append(hops)
        self.rpcs.append(rpcs)

    def as_dict(self) -> dict[str, float]:
        return {"lookup_success": round(self.successes / self.lookups, 4) if self.lookups else 0.0,
                "mean_hops": round(mean(self.hops), 3),
                "p99_hops": percentile(self.hops, 99),
                "rpcs_per_lookup": round(mean(self.rpcs), 3)}


def rounded(value: Any, digits: int = 4) -> Any:
    """Floats rounded (so tiny float noise never shows), containers walked."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {str(k): rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def build_report(params: dict[str, Any], summary: str, figures: dict[str, Any],
                 samples: dict[str, list[float]], series: dict[str, list[list[float]]]
                 ) -> dict[str, Any]:
    """The whole report.json document (pure)."""
    doc: dict[str, Any] = {"report_version": REPORT_VERSION, "scenario": params["scenario"],
                           "summary": summary, "seed": params["seed"], "nodes": params["nodes"],
                           "virtual_time": not params["realtime"], "params": params}
    doc.update(figures)
    doc["samples"] = {name: latency_summary(v) | {"count": len(v)}
                      for name, v in sorted(samples.items())}
    doc["series"] = {name: pts for name, pts in sorted(series.items())}
    return rounded(doc)


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


HOST_ONLY = ("wall_s", "peak_rss_mb", "peak_rss_mb_per_node", "host")


def figures_of(doc: dict[str, Any]) -> dict[str, Any]:
    """What a replay compares: everything but host measurements."""
    return {k: v for k, v in doc.items() if k not in HOST_ONLY}


def differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Paths where two reports differ (pure)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            path = f"{where}.{key}" if where else str(key)
            if key not in old or key not in new:
                out.append(f"{path}: only in {'the new run' if key in new else 'the report'}")
            else:
                out += differences(old[key], new[key], path)
        return out
    if old != new:
        return [f"{where}: {json.dumps(old)[:80]} -> {json.dumps(new)[:80]}"]
    return []


def write_report(out: Path, doc: dict[str, Any], host: dict[str, Any],
                 samples: dict[str, list[float]]) -> list[Path]:
    """report.json, host.json, report.md and the plots under ``out``; returns the files."""
    from sim.plots import draw_all
    from sim.report_md import render_markdown
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(to_json(doc), encoding="utf-8")
    (out / "host.json").write_text(to_json(host), encoding="utf-8")
    plots = draw_all(out, doc, samples)
    (out / "report.md").write_text(render_markdown(doc, host, [p.name for p in plots]),
                                   encoding="utf-8")
    return [out / "report.json", out / "host.json", out / "report.md", *plots]
