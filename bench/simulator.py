"""The simulator at scale (issue 13): figures in virtual time, written to bench/RESULTS.md.

``python -m bench.simulator`` runs each scenario of the issue's benchmark list through
``sim.run.run_simulation`` (virtual time: the figures are independent of this host's
load; only wall time and memory are host figures) and writes the section
"Simulator (virtual time)". ``--only lookup,durability`` picks groups; ``--sizes`` the
lookup sizes. Targets are printed beside each figure; figures are never adjusted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.results import stamp, write_section
from sim.options import SimOptions
from sim.run import SimResult, quiet_logs, run_simulation

SECTION = "Simulator (virtual time)"
GROUPS = ("lookup", "dead", "regional", "churn", "durability", "revocation")


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _run(opts: SimOptions) -> SimResult:
    started = time.monotonic()
    result = run_simulation(opts)
    print(f"{opts.scenario} {opts.nodes} nodes: {time.monotonic() - started:.0f} s wall "
          f"{json.dumps({k: v for k, v in result.merged().items() if k not in ('params', 'series')})[:600]}",
          flush=True)
    return result


def lookup_rows(sizes: Sequence[int], seed: int) -> list[str]:
    rows = ["| nodes | log2 N | lookups | success | mean hops | p99 hops | RPCs/lookup | "
            "lookup p50 / p99 ms | hops ≤ log2(N)/2+1 | 100 % success | wall s | "
            "peak RSS MB (per node) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        r = _run(SimOptions("lookup", nodes=n, seed=seed, queries=200))
        d, h = r.report, r.host
        dht, lat = d["dht"], d["latency_ms"]
        target = math.log2(n) / 2 + 1
        rows.append(f"| {n} | {math.log2(n):.2f} | {d['lookups']} | {dht['lookup_success']:.3f} | "
                    f"{dht['mean_hops']} | {dht['p99_hops']} | {dht['rpcs_per_lookup']} | "
                    f"{lat['p50']} / {lat['p99']} | {_mark(dht['mean_hops'] <= target)} | "
                    f"{_mark(dht['lookup_success'] == 1.0)} | {h['wall_s']} | "
                    f"{h['peak_rss_mb']} ({h['peak_rss_mb_per_node']}) |")
    return rows


def dead_rows(seed: int) -> list[str]:
    rows = ["| nodes down | connections | queries | p50 ms | p95 ms | p99 ms | DHT planning "
            "p50 ms | recall | handshakes during queries | p50 ≤ 2 RTT + 100 ms (180) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    kinds = ((0, 32, "warm by model: no handshake (as the issue measured)"),
             (2, 0, "cold: TCP + TLS 1.3, no keeper (warm_peers = 0)"),
             (2, 32, "cold: TCP + TLS 1.3, keeper (warm_peers = 32, the default)"))
    for down in (0.0, 0.15, 0.3):
        for rtts, warm, label in kinds:
            r = _run(SimOptions("query", nodes=20, seed=seed, queries=60, down=down,
                                handshake_rtts=rtts, warm_peers=warm))
            d = r.report
            lat, plan = d["latency_ms"], d["samples"]["planning_ms"]
            rows.append(f"| {d['nodes_down']} of 20 | {label} | {d['queries']} | {lat['p50']} | "
                        f"{lat['p95']} | {lat['p99']} | {plan['p50']} | {d['recall']:.3f} | "
                        f"{d['peer_handshakes_during_queries']} | {_mark(lat['p50'] <= 180)} |")
    return rows


def regional_rows(seed: int) -> list[str]:
    rows = ["| nodes | queries | p50 ms | p95 ms | p99 ms | recall | sites asked (mean) |",
            "|---|---|---|---|---|---|---|"]
    for n in (20, 50, 100):
        r = _run(SimOptions("query", nodes=n, seed=seed, queries=40, regions=4, latency_ms=5,
                            jitter_ms=1, between_low_ms=40, between_high_ms=120))
        d = r.report
        lat = d["latency_ms"]
        rows.append(f"| {n} | {d['queries']} | {lat['p50']} | {lat['p95']} | {lat['p99']} | "
                    f"{d['recall']:.3f} | {d['sites_asked_mean']} |")
    return rows


def churn_rows(seed: int, sizes: Sequence[int] = (50,)) -> list[str]:
    rows = ["| nodes | churn | simulated h | departures / returns | queries | recall | "
            "recall over time (each 5 min) | complete queries | lookup success | "
            "≥ 99 % lookups |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        for rate in (0.1, 0.3):
            r = _run(SimOptions("churn", nodes=n, seed=seed, queries=60, churn_per_hour=rate,
                                duration_s=3600.0, session_mean_s=1800.0))
            d = r.report
            ok = d["dht"]["lookup_success"]
            curve = " ".join(f"{y:.2f}" for _x, y in d["series"].get("recall_over_time", []))
            rows.append(f"| {n} | {rate:.0%}/h | {d['duration_h']} | {d['departures']} / "
                        f"{d['returns']} | {d['queries']} | {d['recall']:.3f} | {curve} | "
                        f"{d['queries_complete']:.3f} | {ok:.3f} | {_mark(ok >= 0.99)} |")
    return rows


def durability_rows(seed: int) -> list[str]:
    rows = ["| nodes lost | repair | bundles | recoverable | predicted by placement | "
            "repair bytes | bytes per lost node | k / n / r |", "|---|---|---|---|---|---|---|---|"]
    for frac in (0.1, 0.2, 0.3):
        for repair in (False, True):
            r = _run(SimOptions("durability", nodes=30, seed=seed, down=frac, repair=repair))
            d = r.report
            rows.append(f"| {d['killed']} of 30 ({d['killed_fraction']:.0%}) | "
                        f"{'yes' if repair else 'no'} | {d['bundles']} | "
                        f"{d['bundles_recoverable']:.3f} | {d['predicted_recoverable']:.3f} | "
                        f"{d['repair_bytes']} | {d['repair_bytes_per_lost_node']} | "
                        f"{d['k']} / {d['n']} / {d['r']} |")
    return rows


def revocation_rows(sizes: Sequence[int], seed: int) -> list[str]:
    rows = ["| nodes | members refusing | all refuse after s | adoption p50 / p95 ms | "
            "revoked site knows | calls refused | ≤ 60 s (README bound) | wall s |",
            "|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        r = _run(SimOptions("revocation", nodes=n, seed=seed))
        d = r.report
        lat = d["adoption_ms"]
        after = d["all_refuse_s"]
        rows.append(f"| {n} | {d['members_refusing']} of {d['members']} | "
                    f"{after if after is not None else 'not within 1 h'} | {lat['p50']} / "
                    f"{lat['p95']} | {'yes' if d['revoked_site_knows'] else '**no**'} | "
                    f"{d['refused']} of {d['refusal_checks']} | "
                    f"{_mark(after is not None and after <= 60)} | {r.host['wall_s']} |")
    return rows


TITLES: dict[str, tuple[str, str]] = {
    "lookup": ("DHT lookups vs N (20 ± 10 ms one way)",
               "Nodes join one after another through 4 earlier members; every node publishes "
               "one record; lookups from random members for random records."),
    "dead": ("Federated queries with nodes down (20 nodes, 20 ± 10 ms one way)",
             "Down nodes drop datagrams and refuse connections. 'warm by model': peer "
             "connections need no handshake (the model the issue's 300–1,110 ms were "
             "measured with); 'cold': every new connection pays 2 round trips first; "
             "'keeper': each node keeps connections to up to warm_peers members open from "
             "its start (node.net.keeper); handshakes: peer connections opened while the "
             "60 queries ran."),
    "regional": ("Federated query latency vs N, regional model",
                 "4 regions, 5 ± 1 ms inside, 40–120 ms between (drawn per region pair); "
                 "new connections pay TCP + TLS 1.3 (2 round trips)."),
    "churn": ("Recall and lookups under churn (1 simulated hour)",
              "Poisson departures at the rate, exponential time away (mean 30 min)."),
    "durability": ("Durability after permanent loss of nodes (30 nodes, default k, n, r)",
                   "Lost nodes are revoked; with repair, owners run one repair round before "
                   "they too go down; every bundle is then retrieved through replicas and "
                   "key shares. Bundle keys are random, so placement (and these figures) vary "
                   "between runs."),
    "revocation": ("Revocation: time until every member refuses a revoked site",
                   "The operator's new roster is handed to one member; only roster gossip "
                   "(default settings: push to 6 members on adoption, anti-entropy every "
                   "10 s with 3 members) spreads it; 20 ± 10 ms one way, new connections "
                   "pay TCP + TLS 1.3. Then the revoked site calls 3 members."),
}


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.simulator", description=__doc__)
    p.add_argument("--sizes", default="100,300,1000", help="lookup sizes, comma-separated")
    p.add_argument("--churn-sizes", default="50", help="churn sizes, comma-separated")
    p.add_argument("--revocation-sizes", default="10,50,100,300",
                   help="revocation sizes, comma-separated")
    p.add_argument("--only", default=",".join(GROUPS), help=f"groups: {', '.join(GROUPS)}")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    return p.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    quiet_logs()
    groups = [g for g in args.only.split(",") if g]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        print(f"unknown groups: {', '.join(unknown)}", file=sys.stderr)
        return 2
    makers: dict[str, Callable[[], list[str]]] = {
        "lookup": lambda: lookup_rows([int(s) for s in args.sizes.split(",")], args.seed),
        "dead": lambda: dead_rows(args.seed), "regional": lambda: regional_rows(args.seed),
        "churn": lambda: churn_rows(args.seed, [int(s) for s in args.churn_sizes.split(",")]), "durability": lambda: durability_rows(args.seed),
        "revocation": lambda: revocation_rows([int(s) for s in args.revocation_sizes.split(",")],
                                              args.seed)}
    parts: list[str] = [stamp() + f"- command: `python -m bench.simulator --only {','.join(groups)}"
                        f" --sizes {args.sizes} --seed {args.seed}`\n- every figure but wall "
                        "time and memory is in virtual time: it does not depend on the load "
                        "of this (shared, busy) machine\n"]
    for group in groups:
        title, note = TITLES[group]
        parts.append(f"### {title}\n\n" + "\n".join(makers[group]()) + f"\n\n{note}\n")
    body = "\n".join(parts)
    print(body)
    if not args.no_write:
        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
