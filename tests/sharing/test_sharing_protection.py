"""Key protection sized from membership: small federations publish, and re-share as they grow."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from node.keyshare.service import KeyShareService
from node.replica.service import ReplicaService
from node.sharing.protection import protection_for
from node.sharing.publisher import PublisherService, PublisherSettings, failure_reason
from node.sharing.retrieve import Retriever, SeriesRef
from node.sharing.sinks import sink_for
from node.testing.federation import start_federation
from node.keyshare.service import SharingError
from tests.net.test_roster_gossip import wait_until
from tests.sharing.test_sharing_publish import _assertion, _expected, _files, _ingest, _publisher


@pytest.mark.parametrize("members,expected", [
    (1, (0, 0, 0, False)), (2, (1, 1, 1, False)), (3, (2, 2, 2, True)), (4, (3, 3, 2, True)),
    (6, (3, 5, 2, True)), (50, (3, 5, 2, True))])
def test_protection_rule_with_the_default_3_of_5_and_2_replicas(members: int, expected) -> None:
    sized = protection_for(members, 3, 5, 2)
    assert (sized.k, sized.n, sized.replicas, sized.possible) == expected
    assert bool(sized.warning()) == (members < 6)
    assert protection_for(3, 1, 5, 2).k == 2        # never a key one other site opens alone


def test_every_publish_failure_keeps_its_reason() -> None:
    reason = failure_reason(SharingError("only 1 share holder(s) accepted a key share; k=3"))
    assert reason.startswith("SharingError: only 1 share holder")   # was: just "SharingError"
    assert "internal error" in failure_reason(KeyError("MRN123"))
    assert "MRN123" not in failure_reason(KeyError("MRN123"))


def _services(i: int, name: str) -> list[object]:
    return [KeyShareService(), ReplicaService(), PublisherService(PublisherSettings(), run_jobs=False)]


async def test_three_sites_with_defaults_publish_and_retrieve_with_the_owner_down(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fed = await start_federation(tmp_path, ["owner", "b", "c"], services=_services)  # defaults
    try:
        owner = fed.nodes[0]
        raws = await _ingest(owner)
        with caplog.at_level(logging.WARNING, logger="medfed.publisher"):
            assert await _publisher(owner).run_due() == 1
        assert "federation too small for the configured protection (3-of-5" in caplog.text
        (entry,) = await _publisher(owner).catalog.entries()   # type: ignore[union-attr]
        assert entry.state == "published"
        assert len(entry.share_holders) == 2 and len(entry.replica_holders) == 2
        await owner.stop()
        fed.down.add(0)
        requester = fed.nodes[1]
        result = await Retriever(requester, deadline_s=30).fetch(
            SeriesRef(owner.node_id, entry.bundle_id), _assertion(requester),
            lambda bid: sink_for(tmp_path / "out", bid, "dicom"))
        assert result.source.startswith("replica:")
        assert _files(result.outputs) == _expected(owner, raws)
    finally:
        await fed.stop()


async def test_two_sites_do_not_share_and_say_why(tmp_path: Path) -> None:
    fed = await start_federation(tmp_path, ["owner", "b"], services=_services)
    try:
        owner = fed.nodes[0]
        await _ingest(owner)
        publisher = _publisher(owner)
        assert await publisher.run_due() == 0
        (when, reason), = publisher.last_errors
        assert "PublishError: federation has 2 member(s)" in reason and "at least 3" in reason
        rows = await owner.store.fetchall("SELECT last_error FROM jobs WHERE kind='publish'")
        assert rows[0][0] == reason
    finally:
        await fed.stop()


async def test_bundles_are_re_shared_when_the_federation_grows(tmp_path: Path) -> None:
    fed = await start_federation(tmp_path, ["owner", "b", "c"], services=_services)
    try:
        owner = fed.nodes[0]
        await _ingest(owner)
        publisher = _publisher(owner)
        assert await publisher.run_due() == 1
        assert await publisher.grow_protection() == 0            # nothing changed yet
        for name in ("d", "e"):
            await fed.join(tmp_path, name, services=_services(0, name))
            newest = fed.nodes[-1].membership.roster.current.version
            await wait_until(lambda: owner.membership.roster.current.version == newest, 60,
                             f"the owner learns of {name} by gossip")
        assert await publisher.grow_protection() == 1
        assert await publisher.run_due() == 1
        (entry,) = await publisher.catalog.entries()   # type: ignore[union-attr]
        assert entry.state == "published" and len(entry.share_holders) == 4   # 3-of-4 now
        record = await owner.service("keyshare").splits.current(entry.bundle_id)  # type: ignore[union-attr]
        assert (record.k, record.n) == (3, 4)
    finally:
        await fed.stop()
