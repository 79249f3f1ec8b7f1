"""Scenario "adversary": forged records, garbage, replays and k−1 colluders get nothing.

* Byzantine members (valid keys, 10 % of the nodes, at least one) answer every
  FIND_VALUE with forged records — a genuine record with its count changed, a record
  claiming another member as publisher, a genuine record of another key, a record
  signed by an outsider — try to STORE such forgeries on honest nodes, and spray
  garbage datagrams.
* An outsider on the wire captures datagrams and replays them to their recipients.
* For every published bundle, k−1 of its share holders pool their shares (opened with
  their own keys) and try to decrypt a replica: by combining, and by interpolating the
  k−1 points anyway. As a control, k holders do it and must succeed.

Every honest node then looks up published keys; ``forged_records_accepted`` counts
records in their answers that their publisher never signed (a Byzantine member's own
signed claims under its own name are genuine records of a lying member, counted apart). Promise: 0, and 0
decryptions by colluders.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace
from typing import Any

from nacl.public import SealedBox

from node.bundle.stream import BundleError, read_bundle
from node.dht.ids import target
from node.dht.messages import FindValueRequest, Kind, ValuesResponse
from node.dht.protocol import Handler
from node.dht.records import PayloadKind, Record, sign_record
from node.identity import NodeIdentity
from node.keyshare.service import KeyShareService
from node.keyshare.shamir import Share, ShamirError, combine, lagrange_at_zero
from node.node import Node
from node.replica.service import ReplicaService
from sim.context import SimContext
from sim.data import Placement, plant
from sim.grid import SimGrid
from sim.scenarios.lookup import record_key
from sim.scenarios.sharing import Published, _publish, sharing_services

SUMMARY = ("Byzantine members forge DHT records and send garbage, an outsider replays "
           "captured datagrams, k−1 share holders pool their shares: nothing forged is "
           "accepted, nothing is decrypted.")
DROPS = ("dropped_replayed", "dropped_stale", "dropped_malformed", "dropped_bad_signature",
         "dropped_bad_mac",
         "dropped_non_member", "dropped_too_large", "dropped_bad_id")


class Forger:
    """Makes the forgeries a Byzantine member hands out, and counts them."""

    def __init__(self, me: NodeIdentity, genuine: dict[bytes, list[Record]], now_ms: Any) -> None:
        self.me, self.genuine, self.now_ms = me, genuine, now_ms
        self.outsider = NodeIdentity.from_seed(b"sim-outsider")
        self.sent = 0

    def forge(self, key: bytes) -> list[Record]:
        now = self.now_ms()
        out: list[Record] = []
        real = self.genuine.get(key, [])
        other = next((recs for k, recs in sorted(self.genuine.items()) if k != key), [])
        theirs = [r for r in real if r.publisher_key != self.me.verify_key]
        if theirs:
            out.append(replace(theirs[0], count=theirs[0].count + 1000))       # tampered
            mine = sign_record(self.me, key, 999, now, now + 600_000)
            out.append(replace(mine, publisher_key=theirs[0].publisher_key))   # stolen name
        if other:
            out.append(replace(other[0], key=key))                             # wrong key
        out.append(sign_record(self.outsider, key, 5, now, now + 600_000))     # non-member
        self.sent += len(out)
        return out


def byzantine(node: Node, forger: Forger) -> Handler:
    assert node.dht is not None
    dht = node.dht
    honest = dht._service.handle

    async def handle(dgram: Any, address: Any) -> Any:
        if dgram.kind == Kind.FIND_VALUE:
            ask = FindValueRequest.decode(dgram.body)
            near = dht.routing.find_neighbors(target(ask.key), dht.config.k)
            return Kind.VALUES, ValuesResponse.fit(ask.key, forger.forge(ask.key), near).encode()
        return await honest(dgram, address)
    return handle


def _drops(grid: SimGrid, honest: list[int]) -> int:
    return sum(grid.nodes[i].dht.stats[d] for i in honest for d in DROPS)  # type: ignore[union-attr]


async def _held_share(holder: Node, bundle_id: str, owner: str) -> Share | None:
    svc = holder.service(KeyShareService.name)
    assert isinstance(svc, KeyShareService)
    held = await svc.custody.current(bundle_id, owner)
    if held is None:
        return None
    return Share.from_bytes(SealedBox(holder.identity.box_key).decrypt(held.sealed))


def _decrypts(path: Any, key: bytes, bundle_id: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in read_bundle(fh, key, bundle_id)) > 0
    except (BundleError, ValueError):
        return False


async def _collude(grid: SimGrid, pub: Published, k: int) -> tuple[int, int, int]:
    """(attempts, colluder decryptions, control decryptions with k shares)."""
    entry = pub.entry
    holders = [grid.nodes[grid.index_of(h)] for h in entry.share_holders]
    shares = [s for h in holders if (s := await _held_share(h, entry.bundle_id,
                                                             grid.nodes[pub.owner].node_id))]
    replica_holder = next((h for h in entry.replica_holders), None)
    if replica_holder is None or len(shares) < k:
        return 0, 0, 0
    replica = grid.nodes[grid.index_of(replica_holder)].service(ReplicaService.name)
    assert isinstance(replica, ReplicaService)
    path = replica.store.path(entry.bundle_id)
    few = shares[:k - 1]
    broken = 0
    try:
        broken += _decrypts(path, combine(few), entry.bundle_id)
    except ShamirError:
        pass
    guess = lagrange_at_zero([(s.x, s.data) for s in few]) if few else os.urandom(32)
    broken += _decrypts(path, guess, entry.bundle_id)
    control = int(_decrypts(path, combine(shares[:k]), entry.bundle_id))
    return 2, broken, control


async def run(ctx: SimContext) -> dict[str, Any]:
    o = ctx.opts
    rng = random.Random(o.seed)
    grid = await ctx.grid(sharing_services)
    captured: list[tuple[tuple[str, int], tuple[str, int], bytes]] = []
    try:
        n = o.nodes
        bad = sorted(rng.sample(range(n), max(1, n // 10)))
        honest = [i for i in range(n) if i not in bad]
        owners = sorted(rng.sample(honest, min(2, len(honest))))
        ctx.progress.phase("publishing records and bundles", n)
        genuine: dict[bytes, list[Record]] = {}
        for i in range(n):
            dht = grid.nodes[i].dht
            assert dht is not None
            await dht.publish(record_key(o.seed, i), 1 + i % 7, PayloadKind.NONE)
            rec = dht._published[record_key(o.seed, i)].record
            genuine.setdefault(rec.key, []).append(rec)
            ctx.progress.advance()
        layout = [Placement(site, 3000 + 10 * site, "CT") for site in owners]
        await plant(dict(enumerate(grid.nodes)), layout, o.seed, slices=2, size=32)
        published = await _publish(grid, owners)
        forgers = []
        for i in bad:
            node = grid.nodes[i]
            assert node.dht is not None and node.dht._protocol is not None
            forger = Forger(node.identity, genuine, node.dht.now_ms)
            node.dht._protocol._handler = byzantine(node, forger)
            forgers.append(forger)
            for key in list(genuine)[:8]:          # forged STOREs at honest holders
                for record in forger.forge(key):
                    for j in rng.sample(honest, min(3, len(honest))):
                        c = grid.nodes[j].dht
                        assert c is not None
                        contact = next((x for x in node.dht.routing.contacts()
                                        if x.id == c.node_id), None)
                        if contact is not None and node.dht._client is not None:
                            await node.dht._client.store(contact, record)
        assert ctx.network is not None
        garbage = 0
        for i in bad:
            for _ in range(50):
                j = rng.choice(honest)
                ctx.network.send_datagram(grid.dht_address(i), grid.dht_address(j),
                                          rng.randbytes(rng.randrange(1, 1400)))
                garbage += 1
        ctx.network.tap = lambda src, dst, data: captured.append((src, dst, data))
        ctx.progress.phase("honest lookups", len(honest))
        forged_accepted = lookups = found = 0
        signatures = {r.signature for recs in genuine.values() for r in recs}
        liars = {grid.nodes[i].identity.verify_key for i in bad}
        own_claims = 0
        for i in honest:
            home = grid.nodes[i].dht
            assert home is not None
            for owner in rng.sample(range(n), min(5, n)):
                result = await home.get(record_key(o.seed, owner))
                lookups += 1
                forged_accepted += sum(r.signature not in signatures and
                                       r.publisher_key not in liars for r in result.records)
                own_claims += sum(r.signature not in signatures and r.publisher_key in liars
                                  for r in result.records)
                found += any(r.publisher == grid.nodes[owner].identity.node_id
                             for r in result.records)
            ctx.progress.advance()
        ctx.network.tap = None
        before = _drops(grid, honest)
        outsider = "10.255.255.1"
        ctx.network.add_host(outsider, 0)
        replays = [(src, dst, data) for src, dst, data in captured
                   if grid.index_of_host(dst[0]) in honest][:500]
        for _src, dst, data in replays:
            ctx.network.send_datagram((outsider, 9), dst, data)
        await grid.settle(1.0)
        refused_replays = _drops(grid, honest) - before
        k = grid.nodes[0].cfg.federation.shares_k
        attempts = broken = control = 0
        for pub in published:
            a, b, c = await _collude(grid, pub, k)
            attempts, broken, control = attempts + a, broken + b, control + c
        rejected_stores = sum(grid.nodes[i].dht.stats["store_rejected"]  # type: ignore[union-attr]
                              for i in honest)
    finally:
        await grid.stop()
    return {"byzantine_nodes": len(bad), "forged_records_sent": sum(f.sent for f in forgers),
            "forged_records_accepted": forged_accepted, "forged_stores_rejected": rejected_stores,
            "byzantine_own_claims_seen": own_claims, "honest_lookups": lookups,
            "lookup_success_despite_byzantine": round(found / lookups, 4) if lookups else 0.0,
            "garbage_datagrams": garbage, "replayed_datagrams": len(replays),
            "replays_refused": refused_replays, "replays_accepted": len(replays) - refused_replays,
            "bundles": len(published), "collusion_attempts": attempts,
            "colluder_decryptions": broken, "control_decryptions_with_k_shares": control,
            "k": k}
