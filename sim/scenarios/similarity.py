"""Scenario "similarity": a near-duplicate of one site's case is planted at another; find it.

Every site holds its synthetic series (4 slices, 32x32) and has published its DHT index.
A clinician at one live site picks one of that site's own series as the query; a noisy
copy of it (another patient, new UIDs) is planted at one random remote site. The home
node runs the real similarity search: the request goes to the sites the DHT planner
names for the query's modality and body part, each site scans its cached vectors, and
the home node ranks the answers. Scored: is the planted copy first, how many bytes of
pixel data crossed the peer API (measured by a recorder on every node's peer client
against the pixel data of every stored image), does the provenance of the run verify.
Runs like every scenario (``run(ctx)``): on the in-memory network in virtual time by
default, on loopback sockets with ``--realtime``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

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
from sim.context import SimContext
from sim.data import plan_layout, plant
from sim.scenarios.common import CLINICIAN, publish_index, query_services

SUMMARY = ("A near-duplicate of one site's series is planted at another; the home site's "
           "similarity search (feature vectors only) must rank it first, move no pixel "
           "data and leave verifiable provenance.")
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


async def run(ctx: SimContext) -> dict[str, Any]:
    o = ctx.opts
    grid = await ctx.grid(similarity_services)
    try:
        rng = random.Random(o.seed)
        ctx.progress.phase("planting series and the near-duplicate", 1)
        nodes = dict(enumerate(grid.nodes))
        instances = await plant(nodes, plan_layout(o.nodes, o.seed), o.seed,
                                slices=SLICES, size=SIZE)
        home_i = rng.randrange(o.nodes)
        home = grid.nodes[home_i]
        own = _stored(home)
        query_uid = sorted({str(ds.SeriesInstanceUID) for ds in own})[0]
        case = [ds for ds in own if str(ds.SeriesInstanceUID) == query_uid]
        planted_i = rng.choice([i for i in range(o.nodes) if i != home_i])
        planted = grid.nodes[planted_i]
        copy = list(near_duplicate(case, np.random.default_rng(o.seed), sigma=2.0))
        for ds in copy:
            await ingest_dataset(planted.store, planted.files, ds)
        for node in grid.nodes:
            await _service(node).index_now()
        await publish_index(grid)
        await grid.kill_fraction(o.down, keep=(home_i, planted_i))
        windows = pixel_windows(bytes(ds.PixelData) for i in grid.up
                                for ds in _stored(grid.nodes[i]))
        traffic = TrafficRecorder()
        for i in grid.up:
            traffic.attach(grid.nodes[i].client, grid.nodes[i].cfg.name)  # type: ignore[arg-type]
        modality = str(case[0].Modality)
        body_part = str(case[0].get("BodyPartExamined", "")) or None
        ctx.progress.phase("similarity search", 1)
        started = ctx.now()
        # node.similar signs and checks its requests and assertions with the host clock
        # (time.time()), not the node's transport clock: so does the scenario
        assertion = user_assertion(home.identity, CLINICIAN["user"], CLINICIAN["purpose"])
        answer = await _service(home).search(query_uid, assertion, modality=modality,
                                             body_part=body_part, top=10,
                                             broadcast=o.broadcast)
        elapsed_ms = (ctx.now() - started) * 1000
        verified = (await _service(home).verify_provenance(answer.run_id)).ok
        ctx.progress.advance()
    finally:
        await grid.stop()
    uid_key = home.membership.secrets.uid_key  # type: ignore[union-attr]
    first = answer.matches[0] if answer.matches else None
    top1 = (first is not None and first.node_id == planted.node_id
            and first.match.ref == keyed_uid(str(copy[0].SeriesInstanceUID), uid_key))
    statuses: dict[str, int] = {}
    for site in answer.sites:
        statuses[site.status] = statuses.get(site.status, 0) + 1
    ctx.samples["search_ms"] = [elapsed_ms]
    # each site's own scan time (``scan_ms``) is host time: not in the report
    return {"top1_is_planted": top1,
            "image_bytes_sent": image_bytes(traffic.exchanges, windows),
            "provenance_verified": verified, "nodes_down": len(grid.down),
            # byte counts vary by a few bytes (each site's answer carries its host-timed
            # scan_ms), so the report has the exchanges and whether kilobytes crossed
            "peer_exchanges": len(traffic.exchanges),
            "peer_kilobytes_crossed": traffic.total_bytes > 1000, "planner": answer.plan.mode,
            "sites_asked": len(answer.sites), "site_statuses": statuses,
            "series_scanned": sum(int(s.counts.get("scanned", 0)) for s in answer.sites),
            "search_ms": round(elapsed_ms, 3),
            "top_scores": [round(m.match.score, 6) for m in answer.matches[:3]],
            "instances": instances + len(copy)}
