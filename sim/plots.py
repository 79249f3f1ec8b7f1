"""PNG plots of a report (matplotlib, no display): latency CDFs and every curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS: dict[str, tuple[str, str]] = {   # series name -> (x label, y label)
    "hops_vs_log2n": ("log2 N (nodes)", "mean DHT hops"),
    "rpcs_vs_log2n": ("log2 N (nodes)", "RPCs per lookup"),
    "recall_over_time": ("simulated time (h)", "recall (share of live holders found)"),
    "retrieval_over_time": ("simulated time (h)", "retrieval success"),
    "nodes_up_over_time": ("simulated time (h)", "nodes up"),
    "repair_bytes": ("simulated time (h)", "repair traffic (MB, cumulative)"),
    "recoverable_over_time": ("simulated time (h)", "bundles recoverable"),
    "refusing_over_time": ("simulated time (s)", "members refusing the revoked site"),
}


def _cdf(out: Path, samples: dict[str, list[float]], title: str) -> Path | None:
    latencies = {k: v for k, v in samples.items() if k.endswith("_ms") and v}
    if not latencies:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, values in sorted(latencies.items()):
        ordered = sorted(values)
        ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
        ax.step(ordered, ys, where="post", label=f"{name} (n={len(ordered)})")
    ax.set_xlabel("milliseconds")
    ax.set_ylabel("fraction ≤ x")
    ax.set_title(f"{title}: latency CDF")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    path = out / "latency_cdf.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curve(out: Path, name: str, points: list[list[float]], title: str,
           target: list[list[float]] | None) -> Path:
    xl, yl = LABELS.get(name, ("x", name))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="measured")
    if target:
        ax.plot([p[0] for p in target], [p[1] for p in target], linestyle="--",
                label="target")
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_title(f"{title}: {name.replace('_', ' ')}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    path = out / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_all(out: Path, doc: dict[str, Any], samples: dict[str, list[float]]) -> list[Path]:
    title = f"{doc['scenario']}, {doc['nodes']} nodes, seed {doc['seed']}"
    paths = []
    cdf = _cdf(out, samples, title)
    if cdf is not None:
        paths.append(cdf)
    series = doc.get("series", {})
    for name, points in sorted(series.items()):
        if name.endswith("_target") or not points:
            continue
        paths.append(_curve(out, name, points, title, series.get(f"{name}_target")))
    return paths
