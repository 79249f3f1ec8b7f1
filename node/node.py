"""One hospital node: composes the parts and starts and stops them in order.

Nothing here is global, so the simulator can run many nodes in one process.
"""

from __future__ import annotations

import asyncio
import random
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from .audit.log import AuditLog
from .config.model import NodeConfig
from .datadir import DataFolderLock, open_private_data_dir
from .dht.config import DHTConfig
from .dht.server import DHTServer
from .federation_wiring import build_federation_parts, load_node_membership
from .service import NodeService
from .identity import NodeIdentity
from .logsetup import guard_phi_loggers
from .net.client import PeerClient
from .net.gossip import GossipSettings, RosterGossip
from .net.idle import server_keepalive_timeout
from .net.keeper import KeeperSettings, PeerKeeper
from .net.membership import Membership
from .net.roster import split_address
from .net.roster_dht import RosterDHTSync
from .net.server import PeerServer, PeerServerSettings
from .net.transport import SOCKETS, Transport
from .pacs.ingest import Ingestor
from .pacs.journal import Journal
from .pacs.receivers.pool import ReceiverPool, receiver_count
from .pacs.scp import DicomService
from .ports import listening
from .query.local import LocalBackend
from .store.db import MetadataStore
from .store.files import ObjectFiles
from .users import TokenStore, UserStore

if TYPE_CHECKING:
    from .pacs.upstream import UpstreamService

log = logging.getLogger("medfed.node")


@dataclass
class NodePorts:
    dicom: int = 0
    peer: int = 0
    dht: int = 0
    web: int = 0


class Node:
    def __init__(self, cfg: NodeConfig, identity: NodeIdentity | None = None, *,
                 membership: Membership | None = None, peer_sock: socket.socket | None = None,
                 services: Sequence[NodeService] = (), dht_config: DHTConfig | None = None,
                 with_dicom: bool = True, transport: Transport = SOCKETS,
                 audit_sync_s: float = 1.0, one_shot: bool = False) -> None:
        """``transport``: real sockets (default) or the simulator's in-memory network;
        ``audit_sync_s``: how often the audit log fsyncs and signs its head (real seconds);
        ``one_shot``: a process that does one thing and exits (``medfed fetch`` with no node
        running): no keeper holds connections warm, and new peer connections carry their
        request in the handshake (``node.net.firstflight``)."""
        self.cfg = cfg
        self.identity = identity or NodeIdentity.load_or_create(cfg.key_dir)
        self.store = MetadataStore.for_config(cfg)
        self.files = ObjectFiles(cfg.objects_dir)
        self.audit: AuditLog | None = None
        self.dicom: DicomService | None = None
        self.ingestor: Ingestor | None = None   # the one validate/write/commit path (C-STORE, STOW-RS)
        self.local = LocalBackend(self.store, self.files, cfg.dicom.ae_title)
        self.membership = membership
        self.peer: PeerServer | None = None
        self.client: PeerClient | None = None
        self.dht: DHTServer | None = None
        self.gossip: RosterGossip | None = None
        self.roster_dht: RosterDHTSync | None = None   # the DHT follows roster changes
        self.keeper: PeerKeeper | None = None   # warm connections to the members asked
        self.upstream: "UpstreamService | None" = None
        self.services: list[NodeService] = list(services)
        self.ports = NodePorts()
        self._peer_sock = peer_sock
        self._dht_config = dht_config
        self._with_dicom = with_dicom
        self.transport = transport
        self._audit_sync_s = audit_sync_s
        self._one_shot = one_shot
        self._stopping = asyncio.Event()
        self._started: list[NodeService] = []
        self._folder_lock: DataFolderLock | None = None
        self._users: UserStore | None = None
        self._tokens: TokenStore | None = None

    @property
    def node_id(self) -> str:
        return self.identity.node_id_hex

    @property
    def users(self) -> UserStore:
        """The local users every federated request is made for (opened on first use)."""
        if self._users is None:
            self._users = UserStore(self.cfg.users_path)
        return self._users

    @property
    def tokens(self) -> TokenStore:
        """Bearer tokens of local users (CLI login, web, DICOMweb)."""
        if self._tokens is None:
            self._tokens = TokenStore(self.users)
        return self._tokens

    def service(self, name: str) -> NodeService | None:
        return next((s for s in self.services if s.name == name), None)

    async def start(self) -> None:
        """Start every part; if one fails, stop those already running and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        guard_phi_loggers()
        loop = asyncio.get_running_loop()
        db = self.cfg.db_path
        self._folder_lock = open_private_data_dir(self.cfg.data_dir, (
            db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"),
            self.cfg.audit_path, self.cfg.key_dir))
        swept = self.files.sweep_temp_files()
        if swept:
            log.info("removed %d partial files left by an earlier crash", swept)
        await self.store.open()
        self.audit = AuditLog(self.cfg.audit_path, self.identity,
                              fsync_interval_s=self._audit_sync_s)
        if self.cfg.upstream is not None:
            from .pacs.upstream import UpstreamService
            self.upstream = UpstreamService(self.cfg.upstream, store=self.store,
                                            data_dir=self.cfg.data_dir,
                                            own_ae_title=self.cfg.dicom.ae_title,
                                            audit=self.audit)
            self.local.upstream = self.upstream
            await self.upstream.start()
        journal = Journal(self.cfg.data_dir / "journal") if self.cfg.durability == "full" \
            else None
        self.ingestor = Ingestor(self.store, self.files, series_idle_s=self.cfg.series_idle_s,
                                 journal=journal)
        await asyncio.to_thread(self.ingestor.open_journal)
        if self._with_dicom:
            self.dicom = DicomService(self.cfg.dicom, ingestor=self.ingestor,
                                      backend=self._dicom_backend(), audit=self.audit, loop=loop,
                                      receivers=await self._start_receivers())
            dicom = self.dicom
            self.ports.dicom = await listening(
                lambda: asyncio.to_thread(dicom.start), service="DICOM",
                host=self.cfg.dicom.host, port=self.cfg.dicom.port, config_key="[dicom] port")
        await self._start_federation()
        for svc in self.services:
            await svc.start(self)
            self._started.append(svc)
        self.audit.append("node.start", self.identity.node_id_hex[:16], "ok",
                          dicom_port=self.ports.dicom, peer_port=self.ports.peer)

    async def _start_receivers(self) -> ReceiverPool | None:
        """Receiver processes for storage associations (``[dicom] receivers``), ready
        before the DICOM port opens so that the first senders already use them."""
        count = receiver_count(self.cfg.dicom.receivers)
        if not count:
            return None
        assert self.ingestor is not None and self.audit is not None
        pool = ReceiverPool(count, ingestor=self.ingestor, audit=self.audit,
                            data_dir=self.cfg.data_dir, journal=self.cfg.durability == "full",
                            network_timeout_s=self.cfg.dicom.network_timeout_s,
                            dimse_timeout_s=self.cfg.dicom.dimse_timeout_s,
                            log_file=self.cfg.log_path)
        await asyncio.to_thread(pool.start)
        return pool

    def _dicom_backend(self):  # type: ignore[no-untyped-def]
        """The C-FIND/C-GET backend: a service named 'dicom-backend' may replace the
        local one (e.g. to answer the federation AE title from all sites)."""
        svc = self.service("dicom-backend")
        return svc if svc is not None else self.local

    async def _start_federation(self) -> None:
        if self.membership is None:
            self.membership = load_node_membership(self.identity, self.cfg.data_dir)
        if self.membership is None:
            return
        assert self.audit is not None
        dht_config = self._dht_config or DHTConfig(
            routing_path=self.cfg.data_dir / "dht-routing.json")  # survives restarts (JSON)
        fed = self.cfg.federation
        peer_settings = PeerServerSettings(  # the replay cache survives restarts
            nonce_journal=self.cfg.data_dir / "peer-nonces.log",
            keepalive_timeout_s=server_keepalive_timeout(fed.peer_idle_timeout_s))   # clients close first
        parts = build_federation_parts(self.identity, self.membership, self.audit,
                                       dht_config=dht_config, peer_settings=peer_settings,
                                       transport=self.transport,
                                       idle_timeout_s=fed.peer_idle_timeout_s,
                                       first_flight=self._one_shot)
        self.peer, self.client, self.dht = parts.peer, parts.client, parts.dht
        for svc in self.services:
            register_routes = getattr(svc, "register_routes", None)
            if register_routes is not None:
                register_routes(self)
        peer = self.peer
        if self._peer_sock is not None:
            self.ports.peer = await peer.start(sock=self._peer_sock)
        else:
            self.ports.peer = await listening(
                lambda: peer.start(self.cfg.peer_host, self.cfg.peer_port), service="peer API",
                host=self.cfg.peer_host, port=self.cfg.peer_port, config_key="[peer] port")
        if self.dht is not None:
            me = self.membership.roster.member(self.node_id)
            dht_port = self.cfg.dht_port
            if me is not None:
                dht_port = split_address(me.dht_address)[1]
            dht = self.dht
            _host, self.ports.dht = await listening(
                lambda: dht.start(self.cfg.dht_bind_host, dht_port), service="DHT (UDP)",
                host=self.cfg.dht_bind_host, port=dht_port,
                config_key="[dht] port (and the DHT address in the admission request)")
            self.roster_dht = RosterDHTSync(dht, self.membership.roster, self.node_id)
            self.roster_dht.start()   # before gossip: a roster caught up at start counts too
        self.gossip = RosterGossip(self.node_id, self.membership.roster, self.client,
                                   GossipSettings.from_federation(self.cfg.federation),
                                   rng=random.Random(self.identity.node_id))  # repeatable (sim)
        await self.gossip.start()
        if not self._one_shot:     # a process that exits soon holds no connections warm
            self.keeper = PeerKeeper(self.client, self.membership.roster, self.node_id,
                                     KeeperSettings(warm_peers=fed.warm_peers,
                                                    idle_timeout_s=fed.peer_idle_timeout_s),
                                     rng=random.Random(self.identity.node_id))  # repeatable (sim)
            self.keeper.start()

    async def bootstrap_dht(self) -> int:
        """Join the DHT through the roster's other members (a sample of them first:
        ``DHTServer.join_through``); returns contacts learned."""
        if self.dht is None or self.membership is None:
            return 0
        addrs = [split_address(m.dht_address) for m in self.membership.roster.current.active()
                 if m.node_id != self.node_id]
        return await self.dht.join_through(addrs)

    async def stop(self) -> None:
        for svc in reversed(self._started):
            try:
                await svc.stop()
            except Exception:
                log.exception("service %s did not stop cleanly", svc.name)
        self._started.clear()
        if self.keeper is not None:
            await self.keeper.stop()
            self.keeper = None
        if self.gossip is not None:
            await self.gossip.stop()
            self.gossip = None
        if self.roster_dht is not None:
            await self.roster_dht.stop()
            self.roster_dht = None
        if self.dht is not None:
            await self.dht.stop()
        if self.peer is not None:
            await self.peer.stop()
        if self.client is not None:
            await self.client.close()
        if self.dicom is not None:
            await asyncio.to_thread(self.dicom.stop)
            self.dicom = None
        if self.ingestor is not None:
            await asyncio.to_thread(self.ingestor.close)
        if self.upstream is not None:
            await self.upstream.stop()
            self.upstream = None
        if self.audit is not None:
            self.audit.append("node.stop", self.identity.node_id_hex[:16], "ok")
            self.audit.close()
            self.audit = None
        await self.store.close()
        self.dht = self.peer = self.client = None  # type: ignore[assignment]
        if self._folder_lock is not None:
            self._folder_lock.release()
            self._folder_lock = None

    async def __aenter__(self) -> "Node":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def request_stop(self) -> None:
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        await self._stopping.wait()
