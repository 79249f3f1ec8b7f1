"""A request from a member that is not in the routing table costs no extra requests when
its bucket is full of live contacts, in virtual time.

In a federation much larger than a routing table most requests come from members the
receiver does not hold. Each one was answered with an address challenge (a ping), and
the challenge's answer with a probe of the bucket's oldest contact (another ping),
though the newcomer could only enter the replacement cache and the oldest contact had
just been heard from (within ``live_for``, 15 minutes as BEP 5 counts a node good): 300 simulated nodes, one hour of churn, 61,000 challenges and
70,000 probes, a quarter of all DHT requests. Here: a node whose table holds a full
bucket of live contacts is asked by a member that falls in that bucket. While the
bucket's oldest contact has been heard from within ``live_for`` the request costs no
challenge and no probe; once it has been quiet longer, the newcomer is challenged (and
the oldest probed) as before.
"""

from __future__ import annotations

import asyncio

from node.dht.config import DHTConfig
from node.dht.ids import Contact
from node.dht.membership import StaticMembership
from node.dht.server import DHTServer
from node.identity import NodeIdentity
from sim.netmodel import NetModel
from sim.network import HostTransport, SimNetwork
from sim.vclock import run_virtual

PORT = 4435
K = 2


def _host(i: int) -> str:
    return f"10.8.0.{i + 1}"


async def _scenario() -> dict[str, int]:
    network = SimNetwork(NetModel(latency_ms=10.0, jitter_ms=0.0), seed=1)
    ids = [NodeIdentity.from_seed(f"challenge:{i}".encode()) for i in range(120)]
    membership = StaticMembership({i.verify_key for i in ids})
    servers: dict[int, DHTServer] = {}

    async def start(i: int) -> DHTServer:
        network.add_host(_host(i), 0)
        server = DHTServer(ids[i], membership, DHTConfig(k=K),
                           transport=HostTransport(network, _host(i)))
        await server.start(_host(i), PORT)
        servers[i] = server
        return server

    me = await start(0)
    for i in range(1, 100):            # a table with full buckets (the others exist)
        await start(i)
        me.routing.add_contact(Contact(ids[i].verify_key, _host(i), PORT))
    held = {c.id for c in me.routing.contacts()}
    outsider_i = next(i for i in range(100, 120)
                      if not me.routing.takes(Contact(ids[i].verify_key, _host(i), PORT)))
    outsider = await start(outsider_i)
    head = me.routing.head_for(Contact(ids[outsider_i].verify_key, _host(outsider_i), PORT))
    assert head is not None and head.id in held
    figures: dict[str, int] = {}
    try:
        found = await me.find_node(head.id)                 # the oldest answers now
        assert head.id in {c.id for c in found.closest}
        before = me.stats["rpcs_sent"]
        assert await outsider.ping(me.address) is not None  # a request from a newcomer
        await asyncio.sleep(2.0)
        figures["quiet_challenges"] = me.stats["address_challenges"]
        figures["quiet_unneeded"] = me.stats["address_challenges_unneeded"]
        figures["quiet_rpcs"] = me.stats["rpcs_sent"] - before
        await asyncio.sleep(DHTConfig().live_for + 1.0)      # the oldest goes quiet
        assert await outsider.ping(me.address) is not None
        await asyncio.sleep(5.0)
        figures["later_challenges"] = me.stats["address_challenges"]
        figures["later_rpcs"] = me.stats["rpcs_sent"] - before
    finally:
        await asyncio.gather(*(s.stop() for s in servers.values()))
    return figures


def test_a_newcomer_to_a_full_live_bucket_costs_no_challenge_until_the_bucket_goes_quiet() -> None:
    figures = run_virtual(_scenario())
    assert figures["quiet_challenges"] == 0
    assert figures["quiet_unneeded"] == 1
    assert figures["quiet_rpcs"] == 0                 # no challenge, no probe of the oldest
    assert figures["later_challenges"] == 1           # quiet bucket: challenged as before
    assert figures["later_rpcs"] >= 2                 # the challenge and the oldest's probe
