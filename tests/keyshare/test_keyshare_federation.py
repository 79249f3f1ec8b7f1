"""Key shares over a real federation: split, release under the owner's policy, reshare, repair."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from nacl.public import SealedBox

from node.keyshare.gather import KeyUnavailable
from node.keyshare.service import DEPOSIT_PATH, SharingError
from node.keyshare.shamir import Share, ShamirError, combine
from node.net.errors import PeerRefused
from node.net.federation import revoke
from node.node import Node
from node.testing.federation import LocalFederation
from tests.keyshare_helpers import (assertion_from, audit_entries, by_id, keyshare, policy_for,
                                    sharing_federation, take_down)

K, N = 3, 4


async def held_share(node: Node, bundle_id: str, owner: str) -> Share:
    """What a (colluding) holder can read from its own custody with its own key."""
    held = await keyshare(node).custody.current(bundle_id, owner)
    assert held is not None
    return Share.from_bytes(SealedBox(node.identity.box_key).decrypt(held.sealed))


async def _split(fed: LocalFederation, key: bytes, bundle_id: str, **policy_kw: Any) -> list[str]:
    owner = fed.nodes[0]
    return await keyshare(owner).distribute(bundle_id, key, policy_for(owner, bundle_id, **policy_kw),
                                            k=K, n=N)


async def test_any_k_holders_give_the_key_and_fewer_give_a_clear_error(tmp_path: Path) -> None:
    async with sharing_federation(tmp_path, 6) as fed:
        key, bundle_id = b"\x11" * 32, "ab" * 32
        holders = await _split(fed, key, bundle_id)
        assert len(holders) == N and fed.nodes[0].node_id not in holders
        for h in holders:  # stored sealed: the key is nowhere in the holder's row
            held = await keyshare(fed.nodes[by_id(fed, h)]).custody.current(bundle_id, fed.nodes[0].node_id)
            assert held is not None and key not in held.sealed
        requester = next(i for i, n in enumerate(fed.nodes) if i and n.node_id not in holders)
        await take_down(fed, by_id(fed, holders[0]))            # n-k holders down: still fine
        got = await keyshare(fed.nodes[requester]).collect_key(
            bundle_id, fed.nodes[0].node_id, assertion_from(fed.nodes[requester]), k=K, deadline_s=10)
        assert got == key
        releases = audit_entries(fed.nodes[by_id(fed, holders[1])], "keyshare.release")
        assert releases and releases[-1].outcome == "ok" and releases[-1].subject == bundle_id
        await take_down(fed, by_id(fed, holders[1]))            # n-k+1 down: not enough
        with pytest.raises(KeyUnavailable, match=r"only 2 of 3 key shares") as caught:
            await keyshare(fed.nodes[requester]).collect_key(
                bundle_id, fed.nodes[0].node_id, assertion_from(fed.nodes[requester]), k=K,
                deadline_s=10)
        assert "unreachable" in str(caught.value)


async def test_holders_refuse_outside_the_owners_policy_and_audit_it(tmp_path: Path) -> None:
    async with sharing_federation(tmp_path, 5) as fed:
        owner, allowed, other = fed.nodes[0], fed.nodes[1], fed.nodes[2]
        key = b"\x22" * 32
        site_only = "cd" * 32
        holders = await _split(fed, key, site_only, sites=(allowed.cfg.name,))
        with pytest.raises(KeyUnavailable, match="does not include the requesting site"):
            await keyshare(other).collect_key(site_only, owner.node_id, assertion_from(other),
                                              k=K, deadline_s=10)
        with pytest.raises(KeyUnavailable, match="does not allow role 'researcher'"):
            await keyshare(allowed).collect_key(site_only, owner.node_id,
                                                assertion_from(allowed, role="researcher"),
                                                k=K, deadline_s=10)
        assert await keyshare(allowed).collect_key(site_only, owner.node_id,
                                                   assertion_from(allowed), k=K, deadline_s=10) == key
        expired = "ef" * 32
        await _split(fed, key, expired, now=time.time() - 100, ttl_s=50)
        with pytest.raises(KeyUnavailable, match="expired"):
            await keyshare(allowed).collect_key(expired, owner.node_id, assertion_from(allowed),
                                                k=K, deadline_s=10)
        refused = [e for h in holders for e in audit_entries(fed.nodes[by_id(fed, h)], "keyshare.release")
                   if e.outcome == "refused" and e.subject == site_only]
        assert refused and all(e.detail["code"] == "release_refused" for e in refused)
        forged = dict(assertion_from(allowed), role="admin")   # signature no longer matches
        with pytest.raises(KeyUnavailable, match="signature"):
            await keyshare(allowed).collect_key(site_only, owner.node_id, forged, k=K, deadline_s=10)


async def test_k_minus_one_colluding_holders_cannot_combine(tmp_path: Path) -> None:
    async with sharing_federation(tmp_path, 5) as fed:
        key, bundle_id = b"\x33" * 32, "01" * 32
        holders = await _split(fed, key, bundle_id)
        shares = [await held_share(fed.nodes[by_id(fed, h)], bundle_id, fed.nodes[0].node_id) for h in holders]
        with pytest.raises(ShamirError, match="needed"):
            combine(shares[:K - 1])
        assert combine(shares[:K]) == key      # the same holders with one more do recover it


async def test_reshare_makes_old_shares_useless_and_revokes_them(tmp_path: Path) -> None:
    async with sharing_federation(tmp_path, 6) as fed:
        owner = fed.nodes[0]
        key, bundle_id = b"\x44" * 32, "23" * 32
        old_holders = await _split(fed, key, bundle_id)
        old = {h: await held_share(fed.nodes[by_id(fed, h)], bundle_id, fed.nodes[0].node_id) for h in old_holders}
        new_holders = await keyshare(owner).reshare(bundle_id, key)
        assert len(new_holders) == N
        new = {h: await held_share(fed.nodes[by_id(fed, h)], bundle_id, fed.nodes[0].node_id) for h in new_holders}
        assert {s.split_id for s in old.values()}.isdisjoint({s.split_id for s in new.values()})
        mixed = list(old.values())[:2] + list(new.values())[:2]
        with pytest.raises(ShamirError, match="different splits"):
            combine(mixed)
        for h, share in old.items():
            rows = await keyshare(fed.nodes[by_id(fed, h)]).custody.all(bundle_id)
            old_row = next(r for r in rows if r.split_id == share.split_id.hex())
            assert old_row.revoked and old_row.sealed == b""
        requester = fed.nodes[5]
        assert await keyshare(requester).collect_key(bundle_id, owner.node_id,
                                                     assertion_from(requester), k=K, deadline_s=10) == key


async def test_repair_reshares_when_a_holder_leaves_the_roster(tmp_path: Path) -> None:
    async with sharing_federation(tmp_path, 6) as fed:
        owner = fed.nodes[0]
        key, bundle_id = b"\x55" * 32, "45" * 32
        holders = await _split(fed, key, bundle_id)
        assert (await keyshare(owner).repair_once()).reshared == []   # nothing to do
        leaver = holders[0]
        signed = revoke(fed.operator_dir, leaver)
        for node in fed.nodes:
            node.membership.roster.offer(signed)
        await take_down(fed, by_id(fed, leaver))
        report = await keyshare(owner).repair_once()
        assert report.reshared == [bundle_id], report.problems
        record = await keyshare(owner).splits.current(bundle_id)
        assert record is not None and leaver not in record.holders and len(record.holders) == N
        requester = next(n for n in fed.nodes[1:] if n.node_id != leaver)
        assert await keyshare(requester).collect_key(bundle_id, owner.node_id,
                                                     assertion_from(requester), k=K, deadline_s=10) == key
        repairs = audit_entries(owner, "keyshare.repair")
        assert repairs[-1].outcome == "ok" and repairs[-1].subject == bundle_id


async def test_bad_deposits_are_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    async with sharing_federation(tmp_path, 3) as fed:
        a, b, c = fed.nodes
        bundle_id = "67" * 32
        member_b = a.membership.roster.member(b.node_id)
        body = {"bundle_id": bundle_id, "split_id": "00" * 16, "sealed": "bm90IGEgc2hhcmU=",
                "policy": policy_for(a, bundle_id).to_dict()}
        with pytest.raises(PeerRefused) as caught:
            await a.client.call(member_b, "POST", DEPOSIT_PATH, body, timeout=5)
        assert caught.value.status == 400
        foreign = dict(body, policy=policy_for(c, bundle_id).to_dict())  # c's policy, sent by a
        with pytest.raises(PeerRefused, match="only the owner"):
            await a.client.call(member_b, "POST", DEPOSIT_PATH, foreign, timeout=5)
        with pytest.raises(PeerRefused) as caught:
            await a.client.call(member_b, "POST", DEPOSIT_PATH, {"bundle_id": "zz"}, timeout=5)
        assert caught.value.status == 400
        assert await keyshare(b).custody.all(bundle_id) == []
        with pytest.raises(SharingError, match="at least k=3"):   # 2 other members < k
            await keyshare(a).distribute(bundle_id, b"\x66" * 32, policy_for(a, bundle_id), k=3, n=4)
        assert await keyshare(b).custody.current(bundle_id, a.node_id) is None
