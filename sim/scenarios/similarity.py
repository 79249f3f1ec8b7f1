"""Scenario "similarity": a near-duplicate of one site's case is planted at another; find it.

Every site holds its synthetic series (4 slices, 32x32) and has published its DHT index.
A clinician at one live site picks one of that site's own series as the query; a noisy
copy of it (another patient, new UIDs) is planted at one random remote site. The home
node runs the real similarity search: the request goes to the sites the DHT planner
names for the query's modality and body part, each site scans its cached vectors, and
the home node ranks the answers. Scored: is the planted copy first, how many bytes of
pixel data crossed the peer API (measured by a recorder on every node's peer client
against the pixel data of every stored image), does the provenance of the run verify.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from node.deid.actions import keyed_uid
from node.users import user_assertion
from node.node import Node
from node.service import NodeService
from node.similar.service import SimilarityService
from node.store.ingest_local import ingest_dataset
from node.synth.duplicate import near_duplicate
from node.testing.traffic import TrafficRecorder, image_bytes, pixel_windows
from sim.data import plan_layout, plant
from sim.grid import SimGrid
from sim.report import SimReport, latency_summary
from sim.scenarios.common import CLINICIAN, SimOptions, publish_index, query_services

SLICES = 4
SIZE = 32


def similarity_services(i: int, name: str) -> Sequence[NodeService]:
    """Query planning (DHT) plus similarity; vectors are indexed by the simulator."""
    return [*query_services(i, name), SimilarityService(index=False)]


def _stored(node: Node) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(node.cfg.objects_dir.rglob("*.dcm"))]


def _service(node: Node) -> SimilarityService:
    svc = node.service(SimilarityService.name)
    assert isinstance(svc, SimilarityService)
    return svc


async def run_similarity(directory: Path, opts: SimOptions) -> SimReport:
    grid = await SimGrid.start(directory, opts.nodes, seed=opts.seed, link=opts.link,
                               services=similarity_services, bootstrap=opts.bootstrap)
    try:
        rng = random.Random(opts.seed)
        nodes = dict(enumerate(grid.nodes))
        instances = await plant(nodes, plan_layout(opts.nodes, opts.seed), opts.seed,
                                slices=SLICES, size=SIZE)
        home_i = rng.randrange(opts.nodes)
        home = grid.nodes[home_i]
        own = _stored(home)
        query_uid = sorted({str(ds.SeriesInstanceUID) for ds in own})[0]
        case = [ds for ds in own if str(ds.SeriesInstanceUID) == query_uid]
        planted_i = rng.choice([i for i in range(opts.nodes) if i != home_i])
        planted = grid.nodes[planted_i]
        copy = list(near_duplicate(case, np.random.default_rng(opts.seed), sigma=2.0))
        for ds in copy:
            await ingest_dataset(planted.store, planted.files, ds)
        for node in grid.nodes:
            await _service(node).index_now()
        await publish_index(grid)
        await grid.kill_fraction(opts.down, keep=(home_i, planted_i))
        windows = pixel_windows(bytes(ds.PixelData) for i in grid.up for ds in _stored(grid.nodes[i]))
        traffic = TrafficRecorder()
        for i in grid.up:
            traffic.attach(grid.nodes[i].client, grid.nodes[i].cfg.name)  # type: ignore[arg-type]
        modality, body_part = str(case[0].Modality), str(case[0].get("BodyPartExamined", "")) or None
        started = time.monotonic()
        assertion = user_assertion(home.identity, CLINICIAN["user"], CLINICIAN["purpose"])
        answer = await _service(home).search(query_uid, assertion, modality=modality,
                                             body_part=body_part, top=10,
                                             broadcast=opts.broadcast)
        elapsed_ms = (time.monotonic() - started) * 1000
        verified = (await _service(home).verify_provenance(answer.run_id)).ok
    finally:
        await grid.stop()
    uid_key = home.membership.secrets.uid_key  # type: ignore[union-attr]
    first = answer.matches[0] if answer.matches else None
    top1 = (first is not None and first.node_id == planted.node_id
            and first.match.ref == keyed_uid(str(copy[0].SeriesInstanceUID), uid_key))
    statuses: dict[str, int] = {}
    for site in answer.sites:
        statuses[site.status] = statuses.get(site.status, 0) + 1
    scan_ms = [float(s.payload.get("scan_ms", 0.0)) for s in answer.sites if s.status == "ok"]
    return SimReport(
        "similarity", opts.nodes, len(grid.down), opts.seed, 1, 1.0 if top1 else 0.0,
        latency_summary([elapsed_ms]), statuses.get("denied", 0),
        extra={"top1_is_planted": top1,
               "image_bytes_sent": image_bytes(traffic.exchanges, windows),
               "provenance_verified": verified,
               "peer_bytes": traffic.total_bytes, "planner": answer.plan.mode,
               "sites_asked": len(answer.sites), "site_statuses": statuses,
               "series_scanned": sum(int(s.counts.get("scanned", 0)) for s in answer.sites),
               "scan_ms_max": round(max(scan_ms, default=0.0), 3),
               "top_scores": [m.match.score for m in answer.matches[:3]],
               "instances": instances + len(copy)})
