"""A real medfed federation whose peer servers sit behind the shared WAN proxy.

Why this shape: the signed roster names each node's reserved port P; the node's peer
server listens on another port Q instead, and a wan_proxy forwards P -> Q. Callers dial
the roster address as usual and cross the emulated link (TLS stays end to end: the
certificate names the node id, not the port). During setup a zero-delay, uncapped proxy
forwards every P -> Q; during a measurement the requester's own port stays direct and
every other node's port goes through one WAN link. The DHT (UDP, same port P) is not
proxied: index lookups are small datagrams.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from bench.wan_links import Link
from bench.wan_proxy_ctl import rebindable_ports, wan_proxy
from node.config.model import NodeConfig
from node.net.testbed import LocalMember, build_federation
from node.net.server import ROSTER_PATH
from node.node import Node
from node.service import NodeService
from node.services import federated_services
from node.sharing.publisher import PublisherService
from node.sharing.retrieve import FetchResult, Retriever, local_assertion, parse_series_ref
from node.users.store import User
from node.sharing.sinks import sink_for
from node.store.ingest_local import ingest_dataset
from node.testing.nodes import loopback_config

NAMES = ("owner", "site-b", "site-c", "site-d", "site-e", "site-f", "site-g")
FETCH_DEADLINE_S = 300.0


def configure(cfg: NodeConfig) -> NodeConfig:
    """2-of-3 key shares, one replica; no background repair or publishing during timing."""
    fed = dataclasses.replace(cfg.federation, shares_k=2, shares_n=3, replicas=1,
                              query_deadline_s=5.0, repair_interval_s=0.0)
    return dataclasses.replace(cfg, federation=fed)


def bench_services() -> list[NodeService]:
    """The production services, except that publishing runs only when the benchmark asks
    (a background pass could otherwise bundle a series while it is still being ingested)."""
    return [PublisherService(run_jobs=False) if svc.name == "publisher" else svc
            for svc in federated_services()]


def node_config(base: Path, name: str, index: int, peer_port: int) -> NodeConfig:
    """The same config in the benchmark process and in the RSS child process."""
    return dataclasses.replace(
        configure(loopback_config(base / name / "data", name=name, ae_title=f"NODE{index}")),
        peer_port=peer_port)


@dataclass
class Published:
    owner_id: str
    bundle_id: str
    bundle_bytes: int
    instances: int
    share_holders: tuple[str, ...]
    replica_holders: tuple[str, ...]


@dataclass
class WanFederation:
    base: Path
    members: list[LocalMember]
    nodes: list[Node]
    roster_ports: list[int]     # P: what the roster names (proxy listens here)
    server_ports: list[int]     # Q: where each peer server really listens
    down: set[int] = dataclasses.field(default_factory=set)

    @property
    def owner(self) -> Node:
        return self.nodes[0]

    def index_of(self, node_id: str) -> int:
        return next(i for i, n in enumerate(self.nodes) if n.node_id == node_id)

    def pairs(self, indices: Iterable[int]) -> list[tuple[int, int]]:
        return [(self.roster_ports[i], self.server_ports[i]) for i in indices]

    @contextlib.asynccontextmanager
    async def links(self, requester: int, link: Link | None) -> AsyncIterator[None]:
        """Requester direct; every other node behind one WAN link (``None``: all direct)."""
        others = [i for i in range(len(self.nodes)) if i != requester]
        if link is None:
            async with wan_proxy(self.pairs(range(len(self.nodes))), rate_mbit=0, delay_ms=0):
                yield
            return
        async with wan_proxy(self.pairs([requester]), rate_mbit=0, delay_ms=0), \
                wan_proxy(self.pairs(others), rate_mbit=link.rate_mbit, delay_ms=link.one_way_ms):
            yield

    def make_node(self, i: int) -> Node:
        m = self.members[i]
        return Node(node_config(self.base, m.name, i, self.server_ports[i]), m.identity,
                    membership=m.membership, peer_sock=None, services=bench_services(),
                    with_dicom=False)

    async def restart_node(self, i: int, requester: int) -> None:
        """Start a stopped node again: same identity, config and data folder."""
        if i in self.down:
            async with self.links(requester, None):
                self.nodes[i] = self.make_node(i)
                await self.nodes[i].start()
                await self.nodes[i].bootstrap_dht()
            self.down.discard(i)

    async def stop_node(self, i: int) -> None:
        if i not in self.down:
            self.down.add(i)
            await self.nodes[i].stop()

    async def stop(self) -> None:
        for i in range(len(self.nodes)):
            await self.stop_node(i)


async def start_wan_federation(base: Path) -> WanFederation:
    """Seven nodes; each peer server on its own port Q behind the roster port P."""
    ports = rebindable_ports(2 * len(NAMES))   # proxies and a restarted owner bind them again
    roster_ports, server_ports = ports[:len(NAMES)], ports[len(NAMES):]
    _operator, members = build_federation(base, list(NAMES), ports=roster_ports)
    for m in members:
        m.sock.close()
    nodes: list[Node] = []
    fed = WanFederation(base, members, nodes, roster_ports, server_ports)
    async with fed.links(0, None):
        for i, m in enumerate(members):
            m.identity.save(base / m.name / "keys")   # for the requester's own process
            node = fed.make_node(i)
            await node.start()
            nodes.append(node)
        for node in nodes:
            await node.bootstrap_dht()
    return fed


async def publish(fed: WanFederation, datasets: Iterable[Dataset]) -> Published:
    """Ingest at the owner, then bundle, split the key and place the replica (all direct)."""
    owner = fed.owner
    for ds in datasets:
        await ingest_dataset(owner.store, owner.files, ds)
        await asyncio.sleep(0)
    async with fed.links(0, None):
        await owner.service("publisher").run_due()  # type: ignore[union-attr]
    catalog = owner.service("publisher").catalog  # type: ignore[union-attr]
    entries = sorted(await catalog.entries(), key=lambda e: e.instances)
    entry = entries[-1] if entries else None
    if entry is None or not entry.replica_holders or len(entry.share_holders) < 3:
        raise RuntimeError(f"publishing did not place shares and a replica: {entry}")
    return Published(owner.node_id, entry.bundle_id, entry.size, entry.instances,
                     tuple(entry.share_holders), tuple(entry.replica_holders))


def read_files(files: Iterable[Path]) -> Iterable[Dataset]:
    for path in files:
        yield pydicom.dcmread(path)


def pick_requester(fed: WanFederation, pub: Published) -> int:
    """A node that is neither owner nor replica holder, preferably holding no share either,
    so everything the owner-down path needs crosses the link."""
    busy = {pub.owner_id, *pub.replica_holders}
    free = [i for i, n in enumerate(fed.nodes) if n.node_id not in busy]
    free.sort(key=lambda i: fed.nodes[i].node_id in pub.share_holders)
    return free[0]


COLD, RUNNING, WARM = "cold process", "running node", "warm pool"
RUNNING_IDLE_S = 2.0      # a running node: its keeper's first dials done, then idle this long
KEEPER_DIAL_WAIT_S = 10.0


async def prepare(node: Node, mode: str) -> None:
    """Put the requester in the state of one kind of row, before the clock starts.

    - ``cold process``: no connection open, nothing known about who is down, no keeper,
      new connections first-flight (a process that starts and fetches at once, like
      ``medfed fetch`` with no node running);
    - ``running node``: the node's keeper started afresh with the pool empty and nothing
      remembered, its first dial to every member done (answered, or failed for a member
      that is down), then ``RUNNING_IDLE_S`` idle: a hospital's ``medfed run`` node that
      has made no query yet;
    - ``warm pool``: no keeper, but one signed GET /v1/roster to every member just before,
      as right after the federated query that found the series.
    """
    assert node.client is not None and node.membership is not None and node.keeper is not None
    await node.keeper.stop()
    await node.client.close()          # the pool and the failed-connect memory
    await node.client.set_first_flight(mode == COLD)   # what Node(one_shot=True) does
    if mode == RUNNING:
        node.keeper.start()
        await node.keeper.dialled(KEEPER_DIAL_WAIT_S)
        await asyncio.sleep(RUNNING_IDLE_S)
    elif mode == WARM:
        others = [m for m in node.membership.roster.current.active() if m.node_id != node.node_id]
        await asyncio.gather(*(node.client.call(m, "GET", ROSTER_PATH, timeout=10) for m in others),
                             return_exceptions=True)   # a member that is down stays cold
    elif mode != COLD:
        raise ValueError(f"unknown requester mode {mode!r}")


async def timed_fetch(node: Node, pub: Published, out: Path, *,
                      mode: str = COLD, marks: list[float] | None = None) -> tuple[float, FetchResult]:
    """Wall clock of one fetch into a DICOM folder, the requester prepared as ``mode``
    (``prepare``); the keeper is stopped again afterwards. ``marks`` gets [first byte,
    last byte] handed to the decoder, in seconds after the start."""
    await prepare(node, mode)
    user = User(name="bench", handle="bench", role="researcher", department="radiology",
                created_at=0, disabled=False, purposes=("research",))
    assertion = local_assertion(node, user, "research")
    ref = parse_series_ref(f"{pub.owner_id}:{pub.bundle_id}")
    t0 = time.perf_counter()

    def progress(received: int, _count: int) -> None:
        if marks is not None and received:
            now = time.perf_counter() - t0
            if not marks:
                marks.append(now)
            marks[1:] = [now]

    try:
        result = await Retriever(node, deadline_s=FETCH_DEADLINE_S).fetch(
            ref, assertion, lambda b: sink_for(out, b, "dicom"), progress=progress)
        return time.perf_counter() - t0, result
    finally:
        assert node.keeper is not None
        await node.keeper.stop()   # between rows the proxies are torn down: nothing to keep
