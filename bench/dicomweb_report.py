"""Pure arithmetic and markdown of the DICOMweb benchmark (no I/O; unit-tested).

Each measure has a medfed figure, the Orthanc anchor's figure from the same round, and
the issue's target as a ratio; a round's ratio is medfed / Orthanc, and the recorded
figure is the median over rounds.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

# (key, label, unit, better, target ratio or None)
MEASURES: tuple[tuple[str, str, str, str, float | None], ...] = (
    ("qido_studies_p50", "QIDO-RS studies, p50", "ms", "lower", 1.0),
    ("qido_instances", "QIDO-RS instances of the series, median", "ms", "lower", None),
    ("wado_series", "WADO-RS series as a byte stream", "MB/s", "higher", 1.0),
    ("metadata_cold", "series metadata, first request", "ms", "lower", 0.5),
    ("metadata", "series metadata, repeated", "ms", "lower", 0.5),
    ("rendered_p50", "rendered JPEG frame, p50", "ms", "lower", 1.0),
    ("rendered_distinct_p50", "rendered JPEG, 20 distinct slices once each, p50", "ms", "lower",
     None),
    ("stow", "STOW-RS of the series", "inst/s", "higher", None),
)


@dataclass
class Rounds:
    medfed: dict[str, list[float]] = field(default_factory=dict)
    orthanc: dict[str, list[float]] = field(default_factory=dict)

    def add(self, who: str, key: str, value: float) -> None:
        getattr(self, who).setdefault(key, []).append(value)


def p50(values: list[float]) -> float:
    return float(statistics.median(values))


def ratios(rounds: Rounds, key: str) -> list[float]:
    mine, theirs = rounds.medfed.get(key, []), rounds.orthanc.get(key, [])
    return [m / o for m, o in zip(mine, theirs) if o > 0]


def verdict(ratio: float | None, better: str, target: float | None) -> str:
    if target is None or ratio is None:
        return ""
    met = ratio <= target if better == "lower" else ratio >= target
    sign = "<=" if better == "lower" else ">="
    return f"{'met' if met else 'NOT MET'} (target {sign} {target:g}x)"


def _fmt(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def table(rounds: Rounds) -> str:
    lines = ["| measure | unit | medfed | Orthanc | medfed / Orthanc | per round | target |",
             "|---|---|---:|---:|---:|---:|---|"]
    for key, label, unit, better, target in MEASURES:
        mine = rounds.medfed.get(key)
        if not mine:
            continue
        theirs = rounds.orthanc.get(key)
        per = ratios(rounds, key)
        ratio = p50(per) if per else None
        lines.append(f"| {label} | {unit} | {_fmt(p50(mine))} | "
                     f"{_fmt(p50(theirs)) if theirs else '-'} | "
                     f"{f'{ratio:.2f}x' if ratio is not None else '-'} | "
                     f"{', '.join(f'{r:.2f}x' for r in per)} | {verdict(ratio, better, target)} |")
    return "\n".join(lines)


def federated_line(p50_ms: float, p95_ms: float, one_way_ms: float, sites: int,
                   statuses: str) -> str:
    bound = 2 * (2 * one_way_ms) + 100
    met = "met" if p50_ms <= bound else "NOT MET"
    return (f"| federated QIDO-RS studies, {sites} sites, {one_way_ms:g} ms one way | "
            f"{p50_ms:.1f} ms | {p95_ms:.1f} ms | {bound:.0f} ms | {met} | {statuses} |")
