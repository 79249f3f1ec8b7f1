"""``medfed sim --workers W`` at scale (issue 13): lookup figures vs N and W, host cost.

``python -m bench.sim_workers --runs 100:1,100:2,300:2`` runs the lookup scenario
(seed 7, 50 lookups per stage) for each NODES:WORKERS pair and prints one markdown row
each: the virtual-time figures (independent of this host's load), then wall time split
into federation build / node start / windows, and peak RSS per worker. It writes
nothing: the rows go into bench/RESULTS.md's Simulator section by hand, with the load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence

from sim.options import SimOptions
from sim.run import quiet_logs, run_simulation

HEADER = ("| nodes | workers | lookups | success | mean hops (≤ log2 N/2+1) | p99 hops | "
          "RPCs/lookup | lookup p50 / p99 ms | wall s | build / start / windows s | windows | "
          "peak RSS MB per worker | MB per node | CPU s per worker | streams between workers |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def row(nodes: int, workers: int, seed: int, queries: int) -> str:
    result = run_simulation(SimOptions("lookup", nodes=nodes, seed=seed, queries=queries,
                                       workers=workers))
    d, h = result.report, result.host
    dht, lat = d["dht"], d["latency_ms"]
    target = math.log2(nodes) / 2 + 1
    phases = h.get("phases_s", {})
    split = " / ".join(str(phases[k]) for k in ("build_federation", "start_nodes", "windows")) \
        if phases else "(one process)"
    per_worker = h.get("peak_rss_mb_per_worker", [h["peak_rss_mb"]])
    per_node = sum(per_worker) / nodes
    met = "yes" if dht["mean_hops"] <= target else "**no**"
    return (f"| {nodes} | {workers} | {d['lookups']} | {dht['lookup_success']:.3f} | "
            f"{dht['mean_hops']} ({target:.2f}: {met}) | {dht['p99_hops']} | "
            f"{dht['rpcs_per_lookup']} | {lat['p50']} / {lat['p99']} | {h['wall_s']} | {split} | "
            f"{h.get('windows', '-')} | {', '.join(str(x) for x in per_worker)} | "
            f"{per_node:.2f} | {', '.join(str(x) for x in h.get('cpu_s_per_worker', ['-']))} | "
            f"{h.get('streams_between_workers', '-')} |")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sim_workers", description=__doc__)
    p.add_argument("--runs", default="100:1,100:2", help="NODES:WORKERS pairs, comma-separated")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--queries", type=int, default=50)
    args = p.parse_args(argv)
    if os.environ.get("PYTHONHASHSEED") != "0":   # one process's figures repeat only so
        os.execve(sys.executable, [sys.executable, "-m", "bench.sim_workers", *sys.argv[1:]],
                  {**os.environ, "PYTHONHASHSEED": "0"})
    quiet_logs()
    print(f"load average at start: {json.dumps([round(x, 2) for x in os.getloadavg()])}")
    print(HEADER, flush=True)
    for pair in args.runs.split(","):
        nodes, workers = (int(x) for x in pair.split(":"))
        print(row(nodes, workers, args.seed, args.queries), flush=True)
    print(f"load average at end: {json.dumps([round(x, 2) for x in os.getloadavg()])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
