"""A member cannot fill another node's disk with replicas: each node holds at most
``max_bytes_per_member`` of replicas offered by one member; past it an offer is refused
(507, with the reason, audited) before anything is pulled, while other members' offers
still pass and a freed replica frees the budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.net.errors import PeerRefused
from node.node import Node
from node.replica.serve import OFFER_PATH, ReplicaSettings
from node.replica.service import ReplicaService
from node.testing.federation import start_federation
from tests.keyshare_helpers import make_bundle, replica

BUNDLE_BYTES = 3 * 20_000


async def _offer(owner: Node, holder: Node, path: Path) -> dict:  # type: ignore[type-arg]
    bundle_id = path.name
    replica(owner).server.offered.add((bundle_id, holder.node_id))   # the owner lets it pull
    member = owner.membership.roster.member(holder.node_id)  # type: ignore[union-attr]
    return await owner.client.call(member, "POST", OFFER_PATH,  # type: ignore[union-attr]
                                   {"bundle_id": bundle_id, "size": path.stat().st_size},
                                   timeout=60)


async def test_offers_past_a_members_budget_are_refused_before_any_pull(tmp_path: Path) -> None:
    budget = 2 * BUNDLE_BYTES + 1000       # room for two bundles per member
    settings = ReplicaSettings(max_bytes_per_member=budget)
    fed = await start_federation(tmp_path, ["a", "b", "holder"], bootstrap=False,
                                 services=lambda i, n: [ReplicaService(settings)])
    try:
        a, b, holder = fed.nodes
        bundles = {n.cfg.name: [make_bundle(tmp_path / n.cfg.name / f"b{i}")[0] for i in range(3)]
                   for n in (a, b)}
        for node in (a, b):
            own = {p.name: p for p in bundles[node.cfg.name]}
            replica(node).set_bundle_source(lambda bid, own=own: own.get(bid),
                                            None)  # type: ignore[arg-type]
        assert all(p.stat().st_size > BUNDLE_BYTES * 0.9 for p in bundles["a"])
        first, second, third = bundles["a"]
        assert (await _offer(a, holder, first))["new"] and (await _offer(a, holder, second))["new"]
        with pytest.raises(PeerRefused) as refused:
            await _offer(a, holder, third)
        assert (refused.value.status, refused.value.code) == (507, "replica_budget_exceeded")
        assert "budget per member" in refused.value.reason
        store = replica(holder).store
        assert not store.has(third.name)
        assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # nothing pulled
        entries = [json.loads(line) for line in holder.cfg.audit_path.read_text().splitlines()]
        assert [e for e in entries if e["action"] == "replica.store" and e["outcome"] == "refused"
                and e["actor"] == a.node_id]
        assert (await _offer(b, holder, bundles["b"][0]))["new"]   # another member's budget
        store.remove(first.name)                                    # a freed replica...
        assert (await _offer(a, holder, third))["new"]              # ...frees the budget
        assert store.bytes_held_for(a.node_id) == second.stat().st_size + third.stat().st_size
    finally:
        await fed.stop()
