"""Encrypted replicas over a real federation: placement, streaming, challenges, repair."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from node.bundle.stream import read_bundle
from node.net.errors import PeerRefused
from node.net.reqsign import RequestRefused
from node.net.server import PeerRequest
from node.replica.placement import replica_candidates
from node.replica.serve import bundle_path
from node.replica.service import ReplicaError
from node.testing.federation import LocalFederation
from tests.keyshare_helpers import by_id, make_bundle, replica, sharing_federation, take_down

R = 2


async def _owned_bundle(fed: LocalFederation, tmp_path: Path) -> tuple[Path, bytes, str]:
    """A bundle at node 0, served to holders it offers replicas to and to requests saying 'ok'."""
    path, key, info = make_bundle(tmp_path / "owner-bundles")

    async def authorize(call: PeerRequest, bundle_id: str) -> None:
        if call.json.get("ok") is not True:
            raise RequestRefused(403, "not_authorized", "sharing policy says no")

    replica(fed.nodes[0]).set_bundle_source(
        lambda bid: path if bid == info.bundle_id else None, authorize)
    return path, key, info.bundle_id


def _held(fed: LocalFederation, holder: str, bundle_id: str) -> Path:
    return replica(fed.nodes[by_id(fed, holder)]).store.path(bundle_id)


def _flip_byte(path: Path, where: int) -> None:
    data = bytearray(path.read_bytes())
    data[where] ^= 0x01
    path.write_bytes(bytes(data))


async def _stream(fed: LocalFederation, reader: int, bundle_id: str, holders: list[str], **kw) -> bytes:
    return b"".join([c async for c in replica(fed.nodes[reader]).open_stream(bundle_id, holders, **kw)])


async def test_replicas_are_placed_identical_and_stream_back_verified(tmp_path: Path) -> None:
    async with sharing_federation(tmp_path, 5) as fed:
        owner = fed.nodes[0]
        path, key, bundle_id = await _owned_bundle(fed, tmp_path)
        avoid = {fed.nodes[1].node_id}
        holders = await replica(owner).place(bundle_id, path.stat().st_size, r=R, exclude=avoid)
        everyone = [n.node_id for n in fed.nodes]
        assert holders == replica_candidates(bundle_id, everyone, owner.node_id, avoid)[:R]
        assert fed.nodes[1].node_id not in holders and owner.node_id not in holders
        for h in holders:
            assert _held(fed, h, bundle_id).read_bytes() == path.read_bytes()
        reader = next(i for i, n in enumerate(fed.nodes) if i and n.node_id not in holders)
        await take_down(fed, by_id(fed, holders[0]))       # first holder down: the next serves
        data = await _stream(fed, reader, bundle_id, holders)
        assert hashlib.sha256(data).hexdigest() == bundle_id
        assert len(list(read_bundle(io.BytesIO(data), key, bundle_id))) == 3
        assert replica(owner).store.has(bundle_id) is False   # the owner holds no replica itself


async def test_owner_serves_its_bundle_only_through_the_authorize_hook(tmp_path: Path) -> None:
    async with sharing_federation(tmp_path, 3) as fed:
        owner, other = fed.nodes[0], fed.nodes[1]
        path, _key, bundle_id = await _owned_bundle(fed, tmp_path)
        with pytest.raises(ReplicaError, match="sharing policy says no"):
            await _stream(fed, 1, bundle_id, [owner.node_id])
        assert await _stream(fed, 1, bundle_id, [owner.node_id], request={"ok": True}) == path.read_bytes()
        member = other.membership.roster.member(owner.node_id)
        with pytest.raises(PeerRefused) as caught:
            await other.client.call(member, "GET", bundle_path("00" * 32), timeout=5)
        assert caught.value.status == 404
        with pytest.raises(PeerRefused) as caught:
            await other.client.call(member, "GET", "/v1/bundles/not-hex", timeout=5)
        assert caught.value.status == 400


async def test_challenge_passes_for_honest_holder_and_fails_after_a_flipped_byte(tmp_path: Path) -> None:
    async with sharing_federation(tmp_path, 4) as fed:
        owner = fed.nodes[0]
        path, _key, bundle_id = await _owned_bundle(fed, tmp_path)
        holders = await replica(owner).place(bundle_id, path.stat().st_size, r=R, exclude=set())
        assert all([await replica(owner).challenge(bundle_id, h) for h in holders])
        _flip_byte(_held(fed, holders[1], bundle_id), path.stat().st_size // 2)
        assert await replica(owner).challenge(bundle_id, holders[0]) is True
        assert await replica(owner).challenge(bundle_id, holders[1]) is False
        with pytest.raises(ReplicaError, match="does not match its id"):
            await _stream(fed, 3, bundle_id, [holders[1]])


async def test_repair_replaces_down_and_corrupt_holders(tmp_path: Path) -> None:
    async with sharing_federation(tmp_path, 6) as fed:
        owner = fed.nodes[0]
        path, _key, bundle_id = await _owned_bundle(fed, tmp_path)
        holders = await replica(owner).place(bundle_id, path.stat().st_size, r=R, exclude=set())
        quiet = await replica(owner).repair_once()
        assert quiet.failed == [] and quiet.placed == [] and quiet.challenges == R
        _flip_byte(_held(fed, holders[0], bundle_id), 100)
        await take_down(fed, by_id(fed, holders[1]))
        report = await replica(owner).repair_once()
        assert {h for _, h, _ in report.failed} == set(holders)
        now = await replica(owner).ledger.holders(bundle_id)
        assert len(now) == R and not set(now) & set(holders)
        assert [b for b, _ in report.placed] == [bundle_id] * R and report.short == []
        assert report.shares is not None and report.shares.problems == []   # keyshare ran too
        for h in now:
            assert _held(fed, h, bundle_id).read_bytes() == path.read_bytes()
            assert await replica(owner).challenge(bundle_id, h)


async def test_bad_offers_are_refused_without_a_partial_file(tmp_path: Path) -> None:
    async with sharing_federation(tmp_path, 3) as fed:
        owner, holder = fed.nodes[0], fed.nodes[1]
        path, _key, bundle_id = await _owned_bundle(fed, tmp_path)
        member = owner.membership.roster.member(holder.node_id)
        replica(owner).server.offered.add((bundle_id, holder.node_id))   # owner lets it pull
        with pytest.raises(PeerRefused, match="limit") as caught:  # claims a smaller size
            await owner.client.call(member, "POST", "/v1/replicas/offer",
                                    {"bundle_id": bundle_id, "size": 10}, timeout=10)
        assert caught.value.status == 502
        with pytest.raises(PeerRefused) as caught:
            await owner.client.call(member, "POST", "/v1/replicas/offer",
                                    {"bundle_id": bundle_id, "size": -1}, timeout=10)
        assert caught.value.status == 400
        store = replica(holder).store
        assert not store.has(bundle_id) and (not store.root.exists() or list(store.root.iterdir()) == [])
