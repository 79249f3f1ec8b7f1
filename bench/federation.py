"""Federation benchmarks on the simulator: query latency / recall, DHT lookups, sites asked.

``python -m bench.federation`` runs the query scenario at 50 and 100 nodes and the lookup
scenario at 50, 100 and 200 nodes, all with 20 ms ± 10 ms one-way latency, and writes
two sections of bench/RESULTS.md. Targets (from the issues) are printed next to each
figure with a pass/fail mark; the figures are what was measured, never adjusted.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Sequence

from bench.results import stamp, write_section
from sim.report import SimReport
from sim.run import quiet_logs, run_scenario
from sim.scenarios.common import SimOptions

QUERY_SECTION = "Federation: query latency and recall (sim)"
DHT_SECTION = "Federation: DHT lookups and planning (sim)"


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def query_rows(reports: Sequence[SimReport], rtt_ms: float) -> list[str]:
    rows = ["| nodes | planner | queries | p50 ms | p95 ms | p99 ms | recall | "
            "sites asked (mean) | target p50 ≤ 2×RTT+100 ms | recall 100 % |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        d = r.to_dict()
        lat = d["latency_ms"]
        rows.append(f"| {r.nodes} | {d['planner']} | {r.queries} | {lat['p50']} | {lat['p95']} | {lat['p99']} | "
                    f"{d['recall']:.3f} | {d['sites_asked_mean']} | "
                    f"{_mark(lat['p50'] <= 2 * rtt_ms + 100)} | {_mark(d['recall'] == 1.0)} |")
    for r in reports:
        d = r.to_dict()
        for problem, count in d.get("live_site_problems", {}).items():
            rows.append(f"\n- {r.nodes} nodes, {d['planner']}: {count} × live site `{problem}`")
    return rows


def dht_rows(reports: Sequence[SimReport]) -> list[str]:
    rows = ["| nodes | log2 N | lookups | success | mean hops | p99 hops | RPCs/lookup | "
            "lookup p50 ms | lookup p99 ms | sites asked / holding (mean) | max excess | "
            "hops ≤ log2(N)/2+1 | asked ≤ holding+2 |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        d = r.to_dict()
        dht, lat, log2n = d["dht"], d["latency_ms"], math.log2(r.nodes)
        rows.append(
            f"| {r.nodes} | {log2n:.2f} | {r.queries} | {dht['lookup_success']:.3f} | "
            f"{dht['mean_hops']} | {dht['p99_hops']} | {dht['rpcs_per_lookup']} | "
            f"{lat['p50']} | {lat['p99']} | {d['sites_asked_mean']} / {d['sites_holding_mean']} | "
            f"{d['sites_asked_excess_max']} | {_mark(dht['mean_hops'] <= log2n / 2 + 1)} | "
            f"{_mark(d['sites_asked_excess_max'] <= 2)} |")
    return rows


async def _run(kind: str, sizes: Sequence[int], args: argparse.Namespace,
               broadcast: Sequence[bool] = (False,)) -> list[SimReport]:
    reports = []
    for n in sizes:
        for wide in broadcast:
            started = time.monotonic()
            opts = SimOptions(kind, nodes=n, seed=args.seed, latency_ms=args.latency_ms,
                              jitter_ms=args.jitter_ms, queries=args.queries, broadcast=wide)
            report = await run_scenario(opts)
            print(f"{kind} {n} nodes{' broadcast' if wide else ''}: "
                  f"{time.monotonic() - started:.0f} s wall; {report.to_json()}", flush=True)
            reports.append(report)
    return reports


def _section(lines: list[str], args: argparse.Namespace, note: str) -> str:
    head = (stamp() + f"- network: {args.latency_ms:g} ms ± {args.jitter_ms:g} ms one-way "
            f"(RTT {2 * args.latency_ms:g} ms), no loss, no nodes down; seed {args.seed}\n"
            f"- command: `python -m bench.federation`\n\n")
    return head + "\n".join(lines) + "\n\n" + note + "\n"


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.federation", description=__doc__)
    p.add_argument("--query-sizes", type=int, nargs="*", default=[50, 100])
    p.add_argument("--dht-sizes", type=int, nargs="*", default=[50, 100, 200])
    p.add_argument("--queries", type=int, default=40)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--jitter-ms", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    return p.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    quiet_logs()
    rtt = 2 * args.latency_ms
    if args.query_sizes:
        reports = asyncio.run(_run("query", args.query_sizes, args, (False, True)))
        body = _section(query_rows(reports, rtt), args,
                        "Half the queries name one patient, half a modality + body part. Planner "
                        "`dht`: planned through the DHT index (lookups included in the latency), "
                        "then fanned out to the planned sites; `broadcast`: every member is "
                        "asked. Home sites are random live members.")
        if not args.no_write:
            write_section(QUERY_SECTION, body)
    if args.dht_sizes:
        reports = asyncio.run(_run("lookup", args.dht_sizes, args))
        body = _section(dht_rows(reports), args,
                        "Each lookup reads one patient's index key from a random live site "
                        "(hops = referral chain to the first holder); then the same patient is "
                        "planned as a single-patient query. DHT bootstrap as in production: each "
                        "node's index publisher pings the roster when its routing table is empty; "
                        "the simulator also joins each node through 4 random earlier members.")
        if not args.no_write:
            write_section(DHT_SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
