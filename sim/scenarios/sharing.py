"""Scenario "sharing": publish series with planted canary PHI, lose the owners, get it all back.

Owner sites hold series whose PHI fields are unique canary strings. Each owner publishes
(de-identify → bundle → k-of-n key shares → r replicas → DHT records); then every owner
is taken down and one replica is tampered with. Every series is retrieved by a live site
through the DHT, key shares and replicas (decrypted in memory only); the tampered copy
must be refused. Finally the disks of every other node (stores, replicas, shares, DHT
state, audit logs) and everything logged are scanned for the canaries: a hit is PHI that
left its site.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.service import NodeService
from node.keyshare.service import KeyShareService
from node.node import Node
from node.replica.service import ReplicaService
from node.replica.store import ReplicaError
from node.sharing.catalog import CatalogEntry
from node.sharing.publisher import PublisherService, PublisherSettings
from node.sharing.retrieve import FetchError, Retriever, SeriesRef, local_assertion
from node.synth.plan import PhiOverrides
from sim.data import Placement, plant
from sim.grid import SimGrid, flip_byte
from sim.context import SimContext
from sim.report import latency_summary
from sim.scenarios.common import CLINICIAN

SUMMARY = ("Publish series with canary PHI, take every owner down, tamper with one replica: "
           "retrieve everything through replicas and key shares; scan every other disk.")

SLICES = 4
SIZE = 64


def sharing_services(i: int, name: str) -> Sequence[NodeService]:
    """Publishing is driven by the simulator (run_jobs=False), not by a poll loop."""
    return [KeyShareService(), ReplicaService(),
            PublisherService(PublisherSettings(poll_s=3600.0), run_jobs=False)]


def canary(site: int, patient: int, field_name: str) -> str:
    return f"CNRY{field_name}{site:03d}X{patient:04d}"   # ≤ 16 chars: fits SH (accession)


def canaries_for(pl: Placement) -> PhiOverrides:
    c = lambda f: (lambda *_: canary(pl.site, pl.patient, f))  # noqa: E731
    return PhiOverrides(patient_name=c("NM"), patient_id=c("ID"), institution=c("IN"),
                        accession=c("AC"), image_comments=c("CM"), private_text=c("PT"))


class MemorySink:
    """Keeps decrypted instances in memory only: nothing of a retrieval touches the disk."""

    def __init__(self) -> None:
        self.instances: list[bytes] = []
        self._staged: list[bytes] = []

    def add(self, instance: bytes) -> None:
        self._staged.append(instance)

    def discard(self) -> None:
        self._staged.clear()

    def commit(self) -> list[Path]:
        self.instances, self._staged = self._staged, []
        return []


class LogTrap(logging.Handler):
    """Everything any node logs during the run, to scan for canaries."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage())
        except Exception:
            self.lines.append(str(record.msg))


def scan_for(roots: Sequence[Path], needles: Sequence[bytes]) -> int:
    """Files under ``roots`` holding any canary (one hit per file and canary)."""
    hits = 0
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                hits += sum(1 for n in needles if n in data)
    return hits


@dataclass
class Published:
    owner: int
    entry: CatalogEntry


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    failures: list[str] = field(default_factory=list)


def _publisher(node: Node) -> PublisherService:
    svc = node.service(PublisherService.name)
    assert isinstance(svc, PublisherService)
    return svc


async def _publish(grid: SimGrid, owners: list[int]) -> list[Published]:
    out: list[Published] = []
    for i in owners:
        pub = _publisher(grid.nodes[i])
        await pub.run_due()
        assert pub.catalog is not None
        out += [Published(i, e) for e in await pub.catalog.entries() if e.reached("published")]
    return out


def _tamper(grid: SimGrid, published: list[Published], rng: random.Random
            ) -> tuple[Published, str] | None:
    """Flip a byte in one replica whose bundle keeps another live replica holder."""
    live = {grid.nodes[i].node_id for i in grid.up}
    ranked = sorted(published, key=lambda p: -sum(h in live for h in p.entry.replica_holders))
    for pub in ranked:
        holders = [h for h in pub.entry.replica_holders if h in live]
        if holders:
            holder = rng.choice(holders)
            replica = grid.nodes[grid.index_of(holder)].service(ReplicaService.name)
            assert isinstance(replica, ReplicaService)
            flip_byte(replica.store.path(pub.entry.bundle_id))
            return pub, holder
    return None


async def _retrieve_all(grid: SimGrid, published: list[Published], rng: random.Random) -> Tally:
    tally = Tally()
    for pub in published:
        node = grid.nodes[rng.choice(grid.up)]
        assertion = local_assertion(node, **CLINICIAN)
        sink = MemorySink()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            result = await Retriever(node, deadline_s=60).fetch(
                SeriesRef(keyed_series_uid=pub.entry.keyed_series_uid), assertion,
                lambda _bundle: sink)
        except FetchError as exc:
            tally.failures.append(str(exc)[:200])
            continue
        finally:
            tally.latencies.append((loop.time() - started) * 1000)
        if result.instances == pub.entry.instances == len(sink.instances):
            tally.ok += 1
    return tally


async def _tamper_refused(grid: SimGrid, pub: Published, holder: str) -> bool:
    """Stream the tampered copy directly: it must not pass as the bundle."""
    node = grid.nodes[next(i for i in grid.up if grid.nodes[i].node_id != holder)]
    replica = node.service(ReplicaService.name)
    assert isinstance(replica, ReplicaService)
    try:
        async for _chunk in replica.open_stream(pub.entry.bundle_id, [holder]):
            pass
    except ReplicaError:
        return True
    return False


async def run(ctx: SimContext) -> dict[str, Any]:
    opts = ctx.opts
    rng = random.Random(opts.seed)
    owners = sorted(rng.sample(range(opts.nodes), max(2, min(4, opts.nodes // 5))))
    layout = [Placement(site, 1000 + 10 * site + k, rng.choice(("CT", "MR")))
              for site in owners for k in range(2)]
    needles = [canary(pl.site, pl.patient, f).encode() for pl in layout
               for f in ("NM", "ID", "IN", "AC", "CM", "PT")]
    trap = LogTrap()
    logging.getLogger().addHandler(trap)
    grid = await ctx.grid(sharing_services)
    try:
        await plant(dict(enumerate(grid.nodes)), layout, opts.seed, slices=SLICES, size=SIZE,
                    phi=canaries_for)
        published = await _publish(grid, owners)
        for i in owners:
            await grid.kill(i)
        extra_down = await grid.kill_fraction(opts.down, keep=owners) if opts.down else []
        tampered = _tamper(grid, published, rng)
        tally = await _retrieve_all(grid, published, rng)
        detected = tampered is not None and await _tamper_refused(grid, *tampered)
        others = [grid.nodes[i].cfg.data_dir.parent for i in range(opts.nodes) if i not in owners]
        hits = scan_for(others, needles)
        hits += sum(1 for line in trap.lines for n in needles if n.decode() in line)
        control = scan_for([grid.nodes[i].cfg.data_dir.parent for i in owners], needles)
    finally:
        logging.getLogger().removeHandler(trap)
        await grid.stop()
    stored = sum(p.entry.size for p in published)
    plain = sum(p.entry.plain_size for p in published)
    retrievals = len(published)
    ctx.samples["retrieval_ms"] = tally.latencies
    return {"nodes_down": len(owners) + len(extra_down), "queries": retrievals,
            "latency_ms": latency_summary(tally.latencies), "bundles": len(published),
            "series_planted": len(layout), "retrievals": retrievals,
            "retrieval_success": round(tally.ok / retrievals, 4) if retrievals else 0.0,
            "phi_canary_hits": hits, "canaries": len(needles),
            "canary_files_at_owners": control,   # the scanner's control: must be > 0
            "tamper_detected": bool(detected),
            "compression_ratio": round(plain / stored, 3) if stored else 0.0,
            "retrieval_failures": tally.failures[:5]}
