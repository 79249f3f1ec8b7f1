"""Similarity search benchmark on the simulator: 10 sites × 1,000 series each.

``python -m bench.similar`` plants ``--series`` synthetic CT/MR series (one 16×16 slice
each: the scan touches only cached vectors, so image size does not matter) at each of
``--sites`` simulated sites — metadata rows in one transaction per site and the vectors
computed from the same synthetic pixels in memory, because writing 10,000 image files
with fsync would dominate the run and is not what is measured — then runs ``--queries``
searches (method hist, no filters, top 10) from random home sites. Measured: end-to-end
latency at the home node (plan, signed requests, every site's scan, provenance checks,
rank, own record), the site-side scan time every answer reports, and the scan
throughput (series per second). Anchor, same invocation: the bare numpy work of one
site's scan (matrix-vector product + top-k over the same number of vectors), so the
ratio is what the request path costs on top of the arithmetic. Writes the "similarity"
section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.results import stamp, write_section
from node.users import user_assertion
from node.similar.hist import HistogramMethod
from node.similar.scan import top_positions
from node.similar.service import SimilarityService
from node.similar.features import PendingSeries, put_vector
from node.similar.method import VolumeInput
from node.store.ingest_local import ingest_dataset
from node.store.records import record_from_dataset
from node.synth.generate import iter_datasets
from node.synth.plan import SynthSpec
from sim.grid import SimGrid
from sim.report import percentile
from sim.run import quiet_logs
from sim.scenarios.common import CLINICIAN

SECTION = "similarity"


def _service(node) -> SimilarityService:  # type: ignore[no-untyped-def]
    svc = node.service(SimilarityService.name)
    assert isinstance(svc, SimilarityService)
    return svc


async def plant_with_vectors(node, datasets: list) -> None:  # type: ignore[no-untyped-def,type-arg]
    """Rows for ``datasets`` (no files) and every method's vector from their pixels."""
    await node.store.ingest_many([record_from_dataset(ds, str(ds.file_meta.TransferSyntaxUID))
                                  for ds in datasets], "local")
    rows = {str(r[1]): PendingSeries(int(r[0]), str(r[1]), float(r[2])) for r in
            await node.store.fetchall("SELECT id, series_uid, last_instance_at FROM series")}
    methods = list(_service(node).registry.methods.values())
    vectors = []
    for ds in datasets:
        voxels = (ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1))
                  + float(ds.get("RescaleIntercept", 0)))
        volume = VolumeInput(voxels[np.newaxis], str(ds.Modality))
        vectors.append((rows[str(ds.SeriesInstanceUID)], [(m, m.features(volume)) for m in methods]))

    def store_all(conn) -> None:  # type: ignore[no-untyped-def]
        for item, computed in vectors:
            for method, vector in computed:
                put_vector(conn, item, method, vector, "")
    await node.store.write(store_all)


def numpy_anchor(n: int, repeats: int = 200) -> float:
    """Milliseconds of the bare arithmetic of one site's scan over ``n`` vectors."""
    method = HistogramMethod()
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((n, method.dim)).astype(np.float32)
    query = rng.standard_normal(method.dim).astype(np.float32)
    started = time.perf_counter()
    for _ in range(repeats):
        top_positions(method.score(query, matrix), 10)
    return (time.perf_counter() - started) * 1000 / repeats


async def run(sites: int, series: int, queries: int, seed: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="medfed-bench-similar-") as tmp:
        grid = await SimGrid.start(Path(tmp), sites, seed=seed,
                                   services=lambda i, n: [SimilarityService(index=False)])
        try:
            started = time.monotonic()
            for i, node in enumerate(grid.nodes):
                spec = SynthSpec(patients=series, studies=1, series=1, slices=1, rows=16, cols=16,
                                 modality="CT" if i % 2 == 0 else "MR", seed=seed, site_seed=i + 1)
                await plant_with_vectors(node, list(iter_datasets(spec)))
                case = SynthSpec(patients=1, studies=1, series=1, slices=2, rows=16, cols=16,
                                 modality=spec.modality, seed=seed + 1, site_seed=i + 1)
                for ds in iter_datasets(case):   # the home's own case: real files
                    await ingest_dataset(node.store, node.files, ds)
                await _service(node).index_now()
            planted_s = time.monotonic() - started
            rng = random.Random(seed)
            latencies, scans, scanned = [], [], []
            cold_ms = 0.0
            for q in range(queries + 1):
                home = grid.nodes[rng.randrange(sites)]
                uid = str((await home.store.fetchone(
                    "SELECT se.series_uid FROM series se JOIN instances i ON i.series_id = se.id "
                    "WHERE i.path IS NOT NULL LIMIT 1"))[0])
                assertion = user_assertion(home.identity, CLINICIAN["user"], CLINICIAN["purpose"])
                t0 = time.monotonic()
                answer = await _service(home).search(uid, assertion, top=10, deadline_s=30)
                elapsed = (time.monotonic() - t0) * 1000
                if any(s.status != "ok" for s in answer.sites):
                    raise RuntimeError(f"a site did not answer: {[s.reason for s in answer.sites]}")
                if q == 0:
                    cold_ms = elapsed   # every site loads its vectors into memory
                    continue
                latencies.append(elapsed)
                for s in answer.sites:
                    scans.append(float(s.payload["scan_ms"]))
                    scanned.append(int(s.counts["scanned"]))
        finally:
            await grid.stop()
    scan_p50 = percentile(scans, 50)
    return {"planted_s": planted_s, "cold_ms": cold_ms,
            "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
            "scan_p50_ms": scan_p50, "scan_p95_ms": percentile(scans, 95),
            "scanned_per_site": statistics.mean(scanned),
            "throughput": statistics.mean(scanned) / (scan_p50 / 1000) if scan_p50 else 0.0,
            "anchor_ms": numpy_anchor(int(statistics.mean(scanned)))}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.similar")
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="Print only.")
    args = parser.parse_args(argv)
    quiet_logs()
    r = asyncio.run(run(args.sites, args.series, args.queries, args.seed))
    table = "\n".join([
        "| sites × series | queries | search p50 ms | search p95 ms | first search ms | "
        "site scan p50 ms | site scan p95 ms | scan throughput (series/s) | numpy anchor ms | scan / anchor |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {args.sites} × {args.series} | {args.queries} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
        f"{r['cold_ms']:.1f} | {r['scan_p50_ms']:.2f} | {r['scan_p95_ms']:.2f} | "
        f"{r['throughput']:,.0f} | {r['anchor_ms']:.3f} | {r['scan_p50_ms'] / r['anchor_ms']:.1f}x |"])
    body = (stamp() + f"- command: `python -m bench.similar --sites {args.sites} --series "
            f"{args.series} --queries {args.queries}`\n"
            f"- setup: rows + vectors planted in {r['planted_s']:.0f} s (not part of any query)\n\n"
            + table + "\n\n"
            "Search: the home node's whole request (plan, signed request to every site, each "
            "site's scan, provenance checks, rank, its own signed record and audit entry); no "
            "injected network latency. Site scan: what each site reports for its part (vector "
            "matrix from memory, matrix-vector product, top 10, metadata of the 10 matches, "
            "bundle ids). First search: each site loads its vectors from SQLite into memory. "
            "Anchor: bare numpy (`score` + `top_positions`) over the same number of vectors.\n")
    print(table)
    if not args.no_write:
        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
