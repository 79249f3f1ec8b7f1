"""N full nodes in one process, with the faults a federation lives with.

Modelled on Tahoe-LAFS's ``no_network`` grid, but nothing is faked: every node is a real
``Node`` (peer API, DHT, SQLite and files in its own folder), admitted by a real
federation CA. Two ways to connect them:

* virtual (``network=SimNetwork``, the default of ``medfed sim``): every node's
  transport is the in-memory network (``sim.network``) on a virtual-time loop; node ids
  come from the seed, so a run is a deterministic function of its inputs;
* real time (``network=None``, ``--realtime``): mTLS on loopback ports, UDP DHT, link
  delays injected by ``sim.link``.

``kill`` takes a node off the network and stops it (its folder stays, as after a power
cut); ``revive`` restarts it from its folder with the same identity and membership on
the same address, as a rebooted hospital server would.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any
from pathlib import Path

from node.config.model import NodeConfig
from node.dht.config import DHTConfig
from node.identity import NodeIdentity
from node.net.fedsecrets import FederationSecrets
from node.net.membership import MembershipPaths, load_membership
from node.net.pki import NODE_URI_PREFIX, node_dns_name
from node.net.roster import split_address
from node.net.testbed import build_federation
from node.net.transport import SOCKETS, Transport
from node.node import Node
from node.service import NodeService
from node.testing.federation import LocalFederation, start_federation
from node.testing.nodes import loopback_config
from sim.dbtemplate import DbTemplate
from sim.link import LinkSpec, SimLink
from sim.network import HostTransport, SimNetwork

ServiceFactory = Callable[[int, str], Sequence[NodeService]]


class GridError(RuntimeError):
    """The simulated grid was asked for something impossible (bad index, node state)."""


def site_name(i: int) -> str:
    return f"site{i:03d}"


# Each node's audit log signs its head this often (real seconds) and at stop: a thousand
# nodes signing once a real second cost a core's quarter and fight for the GIL, and
# model nothing (virtual time does not follow the wall clock).
SIM_AUDIT_SYNC_S = 3600.0
SIM_STORE_READERS = 2   # of 4: inline (virtual-time) readers never run at once, and each
                        # connection costs ~240 kB (its own schema and cache): 1 MB a node


def sim_config(cfg: NodeConfig) -> NodeConfig:
    """Simulator defaults: SQLite without fsync per commit (a crash of the simulator
    loses nothing that matters), two pooled readers, everything else as a hospital
    would run it."""
    return replace(cfg, durability="normal", store_readers=SIM_STORE_READERS)


PEER_PORT = 4433
# The production DHT settings: reads hurry past contacts that seem dead (node.dht.lookup,
# DHTConfig.hurry_reads). Routing tables are not saved (revive rejoins).
SIM_DHT = DHTConfig()


def virtual_host(i: int) -> str:
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


def seeded_identity(seed: int, i: int) -> NodeIdentity:
    return NodeIdentity.from_seed(f"medfed-sim:{seed}:{i}".encode())


def seeded_secrets(seed: int) -> FederationSecrets:
    """Index, linkage and UID keys from the seed: DHT keys and pseudonyms repeat."""
    keys = [hashlib.sha256(f"medfed-sim-secret:{seed}:{i}".encode()).digest() for i in range(3)]
    return FederationSecrets(*keys)


def host_transport(network: SimNetwork, i: int, node_id: str) -> HostTransport:
    return HostTransport(network, virtual_host(i),
                         {"subjectAltName": (("URI", NODE_URI_PREFIX + node_id),)},
                         node_dns_name(node_id))


async def start_virtual_federation(directory: Path, n: int, network: SimNetwork, seed: int, *,
                                   services: ServiceFactory, dht_config: DHTConfig | None,
                                   configure: Callable[[NodeConfig], NodeConfig],
                                   region_of: Callable[[int], int],
                                   progress: Any = None) -> LocalFederation:
    """The same federation as ``start_federation`` (CA, admissions, rosters), on the
    in-memory network with seeded identities; the DHT is joined by the caller."""
    names = [site_name(i) for i in range(n)]
    operator, members = build_federation(
        directory, names, identity_for=lambda i: seeded_identity(seed, i),
        address_for=lambda i: f"{virtual_host(i)}:{PEER_PORT}", secrets=seeded_secrets(seed))
    nodes: list[Node] = []
    template = DbTemplate(directory / "templates")
    if progress is not None:
        progress.phase("starting nodes", n)
    for i, (name, member) in enumerate(zip(names, members)):
        if progress is not None:
            progress.advance()
        network.add_host(virtual_host(i), region_of(i))
        cfg = configure(loopback_config(directory / name / "data", name=name,
                                        ae_title=f"NODE{i}"[:16]))
        cfg = replace(cfg, peer_host=virtual_host(i), peer_port=PEER_PORT)
        if cfg.store_url is None:
            template.install(cfg.db_path)   # schema made once, copied (sim.dbtemplate)
        node = Node(cfg, member.identity, membership=member.membership,
                    services=services(i, name), dht_config=dht_config, with_dicom=False,
                    transport=host_transport(network, i, member.identity.node_id_hex),
                    audit_sync_s=SIM_AUDIT_SYNC_S)
        await node.start()
        nodes.append(node)
    keep_out_of_gc()
    return LocalFederation(operator, nodes, members)


def keep_out_of_gc() -> None:
    """Exempt what exists now (the nodes, their rosters, routing tables) from the cyclic
    garbage collector's later passes. Every full pass walks every live object: with a
    thousand nodes (~1 GB of objects) a pass took seconds and a 300-node run spent 12 %
    of its time there. ``SimGrid.stop`` returns them to the collector."""
    gc.freeze()


def _rebind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise GridError(f"cannot reuse peer port {port} to revive a node: {exc.strerror}") from exc
    return sock


class SimGrid:
    """Use ``await SimGrid.start(...)``; ``async with`` stops every live node."""

    def __init__(self, directory: Path, fed: LocalFederation, services: ServiceFactory,
                 spec: LinkSpec, seed: int, dht_config: DHTConfig | None,
                 configure: Callable[[NodeConfig], NodeConfig],
                 network: SimNetwork | None = None) -> None:
        self.directory = directory
        self.network = network
        self.fed = fed
        self.seed = seed
        self.spec = spec
        self._services = services
        self._dht_config = dht_config
        self._configure = configure
        self.links = [SimLink(spec, random.Random(seed * 100003 + i)) for i in range(len(fed.nodes))]

    # -- building ----------------------------------------------------------------------
    @classmethod
    async def start(cls, directory: Path, n: int, *, seed: int = 1,
                    link: LinkSpec = LinkSpec(), services: ServiceFactory = lambda i, name: (),
                    dht_config: DHTConfig | None = None,
                    configure: Callable[[NodeConfig], NodeConfig] = sim_config,
                    bootstrap: str = "join", join_seeds: int = 4,
                    network: SimNetwork | None = None, progress: Any = None) -> "SimGrid":
        """Start ``n`` nodes. ``bootstrap="join"``: nodes join the DHT one after another
        through ``join_seeds`` random earlier members (a federation that grew);
        ``"roster"``: every node joins through its roster (a 2k sample of it first, as
        ``medfed run`` does: ``DHTServer.join_through``);
        ``"none"``: the caller joins them (``join_range``).
        The link model is installed after the DHT has formed."""
        if n < 1:
            raise GridError("a grid needs at least one node")
        if bootstrap not in ("join", "roster", "none"):
            raise GridError('bootstrap must be "join", "roster" or "none"')
        dht_config = dht_config or SIM_DHT
        if network is None:
            fed = await start_federation(directory, [site_name(i) for i in range(n)],
                                         services=services, with_dicom=False,
                                         dht_config=dht_config, configure=configure,
                                         bootstrap=bootstrap == "roster",
                                         identity_for=lambda i: seeded_identity(seed, i),
                                         secrets=seeded_secrets(seed))
        else:
            fed = await start_virtual_federation(
                directory, n, network, seed, services=services, dht_config=dht_config,
                configure=configure, region_of=network.model.region_of, progress=progress)
            if bootstrap == "roster":
                for node in fed.nodes:
                    await node.bootstrap_dht()
        grid = cls(directory, fed, services, link, seed, dht_config, configure, network)
        try:
            if bootstrap == "join":
                await grid.join_range(1, n, join_seeds, progress)
            for i in range(n):
                grid._install_link(i)
        except BaseException:
            await fed.stop()
            raise
        return grid

    async def join_range(self, first: int, end: int, seeds: int = 4, progress: Any = None) -> None:
        """Nodes first..end-1 join the DHT in waves (a federation that grew): the nodes
        of one wave join at the same moment, each through ``seeds`` random members that
        had joined before the wave (``join_waves``).

        One node after another made the joining last O(N) in virtual time, and every
        started node's periodic work (roster anti-entropy, DHT upkeep) runs all along:
        O(N²) work to build N nodes. Waves that grow with the DHT take O(log N)."""
        if progress is not None:
            progress.phase("joining the DHT", end - first)
        for start, stop in join_waves(max(1, first), end):
            vias = [random.Random(self.seed * 7919 + i).sample(range(start), min(seeds, start))
                    for i in range(start, stop)]
            await asyncio.gather(*(self._join(i, via) for i, via in zip(range(start, stop), vias)))
            if progress is not None:
                progress.advance(stop - start)
        keep_out_of_gc()

    async def _join(self, i: int, via: Sequence[int]) -> None:
        dht = self.nodes[i].dht
        if dht is None:
            raise GridError(f"{site_name(i)} has no DHT")
        await dht.bootstrap([self.dht_address(j) for j in via])

    def _install_link(self, i: int) -> None:
        if self.network is not None:
            return   # the in-memory network applies its own link model
        node, link = self.nodes[i], self.links[i]
        if node.client is not None:
            node.client.link = None if self.spec.is_perfect else link.before_call
        if node.dht is not None:
            node.dht.link = None if self.spec.is_perfect else link

    # -- views -------------------------------------------------------------------------
    @property
    def nodes(self) -> list[Node]:
        return self.fed.nodes

    @property
    def down(self) -> set[int]:
        return set(self.fed.down)

    @property
    def up(self) -> list[int]:
        return [i for i in range(len(self.nodes)) if i not in self.fed.down]

    def dht_address(self, i: int) -> tuple[str, int]:
        return split_address(self.fed.members[i].member.dht_address)

    def index_of(self, node_id: str) -> int:
        for i, member in enumerate(self.fed.members):
            if member.identity.node_id_hex == node_id:
                return i
        raise GridError(f"no simulated node has id {node_id[:16]}…")

    def index_of_host(self, host: str) -> int:
        for i in range(len(self.nodes)):
            if virtual_host(i) == host:
                return i
        return -1

    async def settle(self, seconds: float) -> None:
        """Let the network deliver what is in flight (virtual seconds)."""
        await asyncio.sleep(seconds)

    def _check(self, i: int) -> None:
        if not 0 <= i < len(self.nodes):
            raise GridError(f"no node {i}: the grid has nodes 0..{len(self.nodes) - 1}")

    # -- faults ------------------------------------------------------------------------
    async def kill(self, i: int) -> None:
        """Take node ``i`` off the network (its folder stays, as after a power cut)."""
        self._check(i)
        if i in self.fed.down:
            raise GridError(f"{site_name(i)} is already down")
        self.fed.down.add(i)
        if self.network is not None:
            self.network.set_up(virtual_host(i), False)
        await self.nodes[i].stop()

    async def kill_fraction(self, fraction: float, *, keep: Sequence[int] = ()) -> list[int]:
        """Kill round(fraction × N) random nodes (seeded), never those in ``keep``."""
        if not 0.0 <= fraction < 1.0:
            raise GridError("the fraction of nodes down must be within [0, 1)")
        candidates = [i for i in self.up if i not in keep]
        count = min(len(candidates), round(fraction * len(self.nodes)))
        victims = sorted(random.Random(self.seed + 7).sample(candidates, count))
        for i in victims:
            await self.kill(i)
        return victims

    async def revive(self, i: int, *, join_seeds: int = 4) -> Node:
        """Restart node ``i`` from its folder: same identity, membership read back from
        disk, same peer and DHT ports; it rejoins the DHT through live members."""
        self._check(i)
        if i not in self.fed.down:
            raise GridError(f"{site_name(i)} is not down")
        old, member = self.nodes[i], self.fed.members[i]
        name = site_name(i)
        membership = load_membership(member.identity,
                                     MembershipPaths.under(self.directory / name / "federation"))
        port = split_address(member.member.peer_address)[1]
        transport: Transport = SOCKETS
        sock = None
        if self.network is not None:
            self.network.set_up(virtual_host(i), True)
            transport = host_transport(self.network, i, member.identity.node_id_hex)
        else:
            sock = _rebind(port)
        node = Node(old.cfg, member.identity, membership=membership, peer_sock=sock,
                    services=self._services(i, name), dht_config=self._dht_config,
                    with_dicom=False, transport=transport,
                    audit_sync_s=SIM_AUDIT_SYNC_S if self.network is not None else 1.0)
        await node.start()
        self.nodes[i] = node
        self.fed.down.discard(i)
        live = [j for j in self.up if j != i]
        await self._join(i, random.Random(self.seed + i).sample(live, min(join_seeds, len(live))))
        self._install_link(i)
        await _publish_after_join(node)
        return node

    def set_link(self, spec: LinkSpec) -> None:
        """Change the network for every node mid-run (e.g. add loss after warm-up)."""
        self.spec = spec
        for i, link in enumerate(self.links):
            link.spec = spec
            if i not in self.fed.down:
                self._install_link(i)

    def corrupt(self, i: int, pattern: str = "**/*.dcm", *, offset: int | None = None) -> Path:
        """Flip one byte of the first file under node ``i``'s data folder matching
        ``pattern`` (sorted, so it is repeatable); returns the file changed."""
        self._check(i)
        root = self.nodes[i].cfg.data_dir
        found = sorted(p for p in root.glob(pattern) if p.is_file() and p.stat().st_size > 0)
        if not found:
            raise GridError(f"{site_name(i)} has no file matching {pattern!r} to corrupt")
        flip_byte(found[0], offset)
        return found[0]

    # -- lifecycle ---------------------------------------------------------------------
    async def stop(self) -> None:
        try:
            await self.fed.stop()
        finally:
            gc.unfreeze()

    async def __aenter__(self) -> "SimGrid":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _publish_after_join(node: Node) -> None:
    """What a restarted node's index publisher does once its DHT has joined: publish
    its terms again (records held by nodes that were down are gone: their stores are in
    memory). The grid joins the DHT itself, so the simulator's publishers leave the
    join to it (``IndexPublisher(join_dht=False)``) and this is their first round."""
    from node.index.publisher import IndexPublisher
    publisher = node.service(IndexPublisher.name)
    if isinstance(publisher, IndexPublisher) and publisher.running \
            and not publisher.joins_dht:
        await publisher.sync_now()


JOIN_WAVE_FRACTION = 4   # a wave adds at most a quarter of the nodes already joined


def join_waves(first: int, end: int) -> list[tuple[int, int]]:
    """[start, stop) index ranges covering first..end-1; a wave starting at ``start``
    (nodes 0..start-1 have joined) holds at most max(1, start // JOIN_WAVE_FRACTION)
    nodes, so N nodes join in O(log N) waves."""
    waves, start = [], first
    while start < end:
        stop = min(end, start + max(1, start // JOIN_WAVE_FRACTION))
        waves.append((start, stop))
        start = stop
    return waves


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Invert one byte in place (default: the middle), keeping the file's size."""
    size = path.stat().st_size
    at = size // 2 if offset is None else offset
    if not 0 <= at < size:
        raise GridError(f"offset {at} is outside {path.name} ({size} bytes)")
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0xFF]))
