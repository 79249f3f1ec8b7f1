"""The simulator's JSON report: one flat object per run, same keys for every scenario.

Pure (no I/O). Percentiles use the nearest-rank method so p99 of a small sample is a
value that was actually observed, never an interpolation between two runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


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


@dataclass
class SimReport:
    scenario: str
    nodes: int
    nodes_down: int
    seed: int
    queries: int = 0
    recall: float = 1.0
    latency_ms: dict[str, float] = field(default_factory=lambda: latency_summary([]))
    refused: int = 0
    extra: dict[str, Any] = field(default_factory=dict)   # scenario-specific keys

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("extra")
        doc["recall"] = round(self.recall, 4)
        doc.update(self.extra)
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
