"""The peer connection keeper: bounded, deterministic, re-dials after drops, stops clean.

Real peer servers and clients (mTLS identities, signed requests, the real roster) over
the simulator's in-memory network on a virtual-time loop: handshakes are counted by the
network, and waiting out a backoff is a jump of the virtual clock, not host time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.audit.log import AuditLog
from node.config.model import ConfigError, parse_config
from node.net.client import PeerClient
from node.net.federation import revoke
from node.net.keeper import KeeperSettings, PeerKeeper, sample_rank
from node.net.server import ROSTER_PATH, PeerRequest, PeerServer
from node.net.testbed import LocalMember, build_federation
from sim.grid import PEER_PORT, host_transport, seeded_identity, virtual_host
from sim.netmodel import NetModel
from sim.network import SimNetwork
from sim.vclock import run_virtual


@dataclass
class Site:
    member: LocalMember
    host: str
    server: PeerServer
    client: PeerClient


async def _federation(tmp: Path, n: int, run: Callable[[SimNetwork, list[Site], Path],
                                                       Awaitable[None]]) -> None:
    operator, members = build_federation(
        tmp, [f"site{i}" for i in range(n)], identity_for=lambda i: seeded_identity(5, i),
        address_for=lambda i: f"{virtual_host(i)}:{PEER_PORT}")
    network = SimNetwork(NetModel(latency_ms=20, jitter_ms=0), seed=5)
    sites = []
    for i, m in enumerate(members):
        host = virtual_host(i)
        network.add_host(host, 0)
        transport = host_transport(network, i, m.identity.node_id_hex)
        audit = AuditLog(tmp / f"site{i}" / "audit.log", m.identity)
        server = PeerServer(m.identity, m.membership.roster, m.membership.server_tls(),
                            audit=audit, transport=transport)
        server.add_route("GET", ASK_PATH, _answer)     # stands for a query: counts as asking
        await server.start(host, PEER_PORT)
        client = PeerClient(m.identity, m.membership.client_tls(), roster=m.membership.roster,
                            transport=transport)
        sites.append(Site(m, host, server, client))
    try:
        await run(network, sites, operator)
    finally:
        for site in sites:
            await site.client.close()
            await site.server.stop()


ASK_PATH = "/v1/test/ask"


async def _answer(call: PeerRequest) -> dict[str, str]:
    return {"ok": "yes"}


def _keeper(site: Site, warm: int) -> PeerKeeper:
    return PeerKeeper(site.client, site.member.membership.roster, site.member.identity.node_id_hex,
                      KeeperSettings(warm_peers=warm, backoff_first_s=1.0, backoff_max_s=8.0))


def test_keeps_a_bounded_seeded_set_warm_and_adopts_members_it_asks(tmp_path: Path) -> None:
    async def run(network: SimNetwork, sites: list[Site], operator: Path) -> None:
        home = sites[0]
        keeper = _keeper(home, 3)
        keeper.start()
        await asyncio.sleep(1.0)                  # 2 RTT handshake + the ping: 120 ms
        own = home.member.identity.node_id_hex
        expected = [m.node_id for m in sample_rank(own, home.member.membership.roster.current)]
        assert keeper.kept == expected[:3]        # the same three on every start
        assert all(keeper.warm(n) for n in keeper.kept)
        assert network.handshakes[home.host] == 3 and network.connections(home.host) == 3
        assert keeper.stats["dials"] == 3
        # asking a member outside the set: it is kept (first), the bound holds, and its
        # connection is the one the call opened, not a second dial
        outside = next(s for s in sites[1:]
                       if s.member.identity.node_id_hex not in keeper.kept)
        await home.client.call(outside.member.member, "GET", ASK_PATH, timeout=2.0)
        asked = outside.member.identity.node_id_hex
        assert keeper.kept[0] == asked and len(keeper.kept) == 3 and keeper.warm(asked)
        assert keeper.stats["dials"] == 3 and network.handshakes[home.host] == 4
        # asking a kept member again uses the warm connection: no handshake
        await home.client.call(outside.member.member, "GET", ASK_PATH, timeout=2.0)
        assert network.handshakes[home.host] == 4
        await keeper.stop()

    run_virtual(_federation(tmp_path, 6, run))


def test_roster_gossip_with_a_member_does_not_turn_over_the_kept_set(tmp_path: Path) -> None:
    async def run(network: SimNetwork, sites: list[Site], operator: Path) -> None:
        home = sites[0]
        keeper = _keeper(home, 3)
        keeper.start()
        await asyncio.sleep(1.0)
        kept = keeper.kept
        outside = [s for s in sites[1:] if s.member.identity.node_id_hex not in kept]
        for site in outside:                      # anti-entropy asks random members
            await home.client.call(site.member.member, "POST", ROSTER_PATH,
                                   {"version": home.member.membership.roster.current.version},
                                   timeout=2.0)
            await home.client.call(site.member.member, "GET", ROSTER_PATH, timeout=2.0)
        await asyncio.sleep(1.0)
        assert keeper.kept == kept and all(keeper.warm(n) for n in kept)
        assert keeper.stats["dials"] == 3         # no dial for a member gossip talked to
        await keeper.stop()

    run_virtual(_federation(tmp_path, 6, run))


def test_redials_with_backoff_after_a_drop_and_stops_without_leftovers(tmp_path: Path) -> None:
    async def run(network: SimNetwork, sites: list[Site], operator: Path) -> None:
        home = sites[0]
        before = asyncio.all_tasks()
        keeper = _keeper(home, 2)
        keeper.start()
        await asyncio.sleep(1.0)
        first = keeper.kept[0]
        peer = next(s for s in sites if s.member.identity.node_id_hex == first)
        network.set_up(peer.host, False)          # the peer's machine loses its node
        await asyncio.sleep(0.01)
        assert not keeper.warm(first) and keeper.stats["dropped"] == 1
        assert keeper.down_for(first) is None     # dropped, not yet found down
        await asyncio.sleep(40.0)                 # refused dials, backoff 1 s doubling to 8 s
        failures = keeper.stats["dial_failures"]
        assert 4 <= failures <= 9, keeper.stats   # not a tight loop, not given up
        assert not keeper.warm(first)
        down = keeper.down_for(first)             # since the first failed dial, ~1 s after the drop
        assert down is not None and 38.0 <= down <= 40.0
        assert keeper.down_for(keeper.kept[1]) is None
        network.set_up(peer.host, True)
        await asyncio.sleep(8.0)                  # at most one backoff later
        assert keeper.warm(first) and keeper.warm(keeper.kept[1])
        assert keeper.down_for(first) is None     # answered again: not down
        assert network.connections(home.host) == 2
        await keeper.stop()
        await asyncio.sleep(0.1)                  # the FINs arrive
        assert network.connections(home.host) == 0
        assert asyncio.all_tasks() - before == set()
        dials = keeper.stats["dials"]
        await asyncio.sleep(120.0)                # stopped: nothing dials any more
        assert keeper.stats["dials"] == dials and network.connections(home.host) == 0

    run_virtual(_federation(tmp_path, 4, run))


def test_a_member_that_stays_down_is_redialled_ever_more_rarely(tmp_path: Path) -> None:
    """Default backoff: doubling from 1 s up to 5 minutes (× a seeded 0.5..1), so a
    member away for half an hour costs ~15 failed dials, not ~45 (60 s cap), and is warm
    again within one backoff of its return."""
    async def run(network: SimNetwork, sites: list[Site], operator: Path) -> None:
        home = sites[0]
        keeper = PeerKeeper(home.client, home.member.membership.roster,
                            home.member.identity.node_id_hex, KeeperSettings(warm_peers=2))
        keeper.start()
        await asyncio.sleep(1.0)
        first = keeper.kept[0]
        peer = next(s for s in sites if s.member.identity.node_id_hex == first)
        network.set_up(peer.host, False)
        await asyncio.sleep(1800.0)
        failures = keeper.stats["dial_failures"]
        assert 10 <= failures <= 20, keeper.stats
        down = keeper.down_for(first)
        assert down is not None and down > 1790.0
        network.set_up(peer.host, True)
        await asyncio.sleep(KeeperSettings().backoff_max_s)
        assert keeper.warm(first) and keeper.down_for(first) is None
        await keeper.stop()

    run_virtual(_federation(tmp_path, 4, run))


def test_an_idle_kept_connection_is_kept_open_by_keep_alives(tmp_path: Path) -> None:
    """Kept connections nothing uses carry a ping just before the pool's idle timeout,
    so they stay open: no drop, no new handshake; a connection in use needs no ping."""
    async def run(network: SimNetwork, sites: list[Site], operator: Path) -> None:
        home = sites[0]
        settings = KeeperSettings(warm_peers=2, idle_timeout_s=60.0, dial_deadline_s=5.0)
        assert settings.keepalive_s == 55.0
        home.client = PeerClient(home.member.identity, home.member.membership.client_tls(),
                                 roster=home.member.membership.roster,
                                 transport=host_transport(network, 0,
                                                          home.member.identity.node_id_hex),
                                 idle_timeout_s=settings.idle_timeout_s)
        keeper = PeerKeeper(home.client, home.member.membership.roster,
                            home.member.identity.node_id_hex, settings)
        keeper.start()
        await asyncio.sleep(1.0)
        busy_id, idle_id = keeper.kept
        busy = next(s for s in sites if s.member.identity.node_id_hex == busy_id)
        for _ in range(20):                       # 10 idle timeouts; one member asked often
            await home.client.call(busy.member.member, "GET", ASK_PATH, timeout=2.0)
            await asyncio.sleep(30.0)
        assert keeper.stats["dropped"] == 0 and keeper.stats["dials"] == 2, keeper.stats
        assert network.handshakes[home.host] == 2 and network.connections(home.host) == 2
        assert keeper.warm(busy_id) and keeper.warm(idle_id)
        # only the idle one was pinged: once per keep-alive period (600 s / 55 s)
        assert 9 <= keeper.stats["keepalives"] <= 11, keeper.stats
        assert keeper.stats["keepalive_failures"] == 0
        await keeper.stop()
        await home.client.close()

    run_virtual(_federation(tmp_path, 4, run))


def test_a_revoked_member_is_let_go_and_another_kept(tmp_path: Path) -> None:
    async def run(network: SimNetwork, sites: list[Site], operator: Path) -> None:
        home = sites[0]
        keeper = _keeper(home, 2)
        keeper.start()
        await asyncio.sleep(1.0)
        gone = keeper.kept[1]
        assert home.member.membership.roster.offer(revoke(operator, gone))
        await asyncio.sleep(1.0)
        assert gone not in keeper.kept and len(keeper.kept) == 2
        assert all(keeper.warm(n) for n in keeper.kept)
        assert network.connections(home.host) == 2   # the revoked member's was closed
        await keeper.stop()

    run_virtual(_federation(tmp_path, 4, run))


def test_zero_warm_peers_dials_nothing(tmp_path: Path) -> None:
    async def run(network: SimNetwork, sites: list[Site], operator: Path) -> None:
        keeper = _keeper(sites[0], 0)
        keeper.start()
        await asyncio.sleep(5.0)
        assert keeper.kept == [] and network.handshakes[sites[0].host] == 0
        await keeper.stop()

    run_virtual(_federation(tmp_path, 3, run))


def test_config_sets_the_keeper_and_refuses_nonsense(tmp_path: Path) -> None:
    cfg = parse_config({"federation": {"warm_peers": 8, "peer_idle_timeout_s": 120}}, tmp_path)
    assert cfg.federation.warm_peers == 8 and cfg.federation.peer_idle_timeout_s == 120.0
    assert parse_config({}, tmp_path).federation.warm_peers == 32
    with pytest.raises(ConfigError, match="warm_peers"):
        parse_config({"federation": {"warm_peers": -1}}, tmp_path)
    with pytest.raises(ConfigError, match="peer_idle_timeout_s"):
        parse_config({"federation": {"peer_idle_timeout_s": 0}}, tmp_path)
