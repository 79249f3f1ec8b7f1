"""Roster spreading between running members: push on change, anti-entropy, revocation.

Real nodes (mTLS peer API, SQLite, audit log) in one event loop; the operator hands a
roster to ONE member, through the same code `medfed federation publish` runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.cli.main import app
from node.config.model import NodeConfig
from node.net.errors import PeerRefused
from node.net.federation import current_roster, operator_ca, revoke
from node.net.handover import hand_over
from node.node import Node
from node.testing.federation import LocalFederation, start_federation

BOUND_S = 60.0    # the stated bound for 20 members with default settings (README)
DEADLINE_S = 3 * BOUND_S   # generous: the suite must pass on a loaded machine too


async def wait_until(check: Callable[[], bool], deadline_s: float, what: str) -> float:
    """Event-driven wait (polls state, no fixed sleep-then-assert); seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > deadline_s:
            raise AssertionError(f"not within {deadline_s:.0f} s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def _versions(fed: LocalFederation) -> list[int]:
    return [n.membership.roster.current.version for i, n in enumerate(fed.nodes)
            if i not in fed.down]


def _gossip(**settings: float) -> Callable[[NodeConfig], NodeConfig]:
    def configure(cfg: NodeConfig) -> NodeConfig:
        return dataclasses.replace(cfg, federation=dataclasses.replace(cfg.federation, **settings))
    return configure


async def test_a_revocation_handed_to_one_of_20_members_reaches_all_within_the_bound(
        tmp_path: Path) -> None:
    names = [f"site{i:02d}" for i in range(20)]
    fed = await start_federation(tmp_path, names, bootstrap=False)    # default gossip settings
    try:
        victim = fed.nodes[7]
        signed = revoke(fed.operator_dir, victim.node_id)
        held = await hand_over(operator_ca(fed.operator_dir), signed,
                               fed.nodes[0].membership.roster.member(fed.nodes[0].node_id).peer_address,
                               timeout=60)
        assert held == signed.roster.version
        took = await wait_until(lambda: set(_versions(fed)) == {signed.roster.version}, DEADLINE_S,
                                "every member holds the revoking roster")
        print(f"roster reached 20 members in {took:.2f} s")
        assert victim.gossip is not None and victim.gossip.revoked   # it learned, and says so
        assert victim.gossip.state.revoked_at_version == signed.roster.version
        other = fed.nodes[3]
        with pytest.raises(PeerRefused) as refused:                 # refused everywhere
            await victim.client.call(other.membership.roster.current.member(other.node_id),
                                     "POST", "/v1/query", {}, timeout=5)
        assert refused.value.code == "revoked"
        assert all(n.membership.roster.status(victim.node_id) == "revoked" for n in fed.nodes)
    finally:
        await fed.stop()


async def test_anti_entropy_alone_spreads_and_a_node_offline_catches_up_at_start(
        tmp_path: Path) -> None:
    # no push at all: only the periodic exchange with one random member spreads it
    fed = await start_federation(tmp_path, ["a", "b", "c", "d", "e"], bootstrap=False,
                                 configure=_gossip(roster_push_fanout=0,
                                                   roster_pull_interval_s=0.2,
                                                   roster_pull_peers=1))
    try:
        offline = fed.nodes[4]
        await offline.stop()
        fed.down.add(4)
        signed = revoke(fed.operator_dir, fed.nodes[3].node_id)
        entry = fed.nodes[0].membership.roster.current.member(fed.nodes[0].node_id)
        await hand_over(operator_ca(fed.operator_dir), signed, entry.peer_address)
        await wait_until(lambda: set(_versions(fed)) == {signed.roster.version}, 60,
                         "the running members converge by anti-entropy")
        assert offline.membership.roster.current.version < signed.roster.version

        # back after the change: its first round at start fetches the newer roster
        revived = Node(dataclasses.replace(offline.cfg, peer_port=0), offline.identity,
                       membership=offline.membership, with_dicom=False)
        await revived.start()
        fed.nodes[4] = revived
        fed.down.discard(4)
        await wait_until(lambda: revived.membership.roster.current.version ==
                         signed.roster.version, 60, "the returning node catches up at start")
        assert current_roster(fed.operator_dir).roster.version == signed.roster.version
    finally:
        await fed.stop()


async def test_publish_cli_hands_over_and_says_what_failed(tmp_path: Path) -> None:
    fed = await start_federation(tmp_path, ["a", "b"], bootstrap=False)
    try:
        operator = str(fed.operator_dir)
        b = fed.nodes[1].membership.roster.current.member(fed.nodes[1].node_id)
        runner = CliRunner()
        nowhere = await asyncio.to_thread(runner.invoke, app, [
            "federation", "publish", "--to", "127.0.0.1:1", "--dir", operator])
        assert nowhere.exit_code == 1 and "no member of roster" in " ".join(nowhere.output.split())
        signed = revoke(fed.operator_dir, fed.nodes[0].node_id)   # (signs only)
        done = await asyncio.to_thread(runner.invoke, app, [
            "federation", "publish", "--to", b.peer_address, "--dir", operator])
        assert done.exit_code == 0, done.output
        assert f"holds roster v{signed.roster.version}" in done.output
        assert fed.nodes[1].membership.roster.current.version == signed.roster.version
        await wait_until(lambda: fed.nodes[0].gossip is not None and fed.nodes[0].gossip.revoked,
                         60, "the revoked node learns it from the member that got the roster")
        forged = tmp_path / "forged.json"
        forged.write_bytes(signed.to_json().replace(b'"version":', b'"version":1', 1))
        bad = await asyncio.to_thread(runner.invoke, app, [
            "federation", "publish", str(forged), "--to", b.peer_address, "--dir", operator])
        assert bad.exit_code == 1 and "cannot publish" in bad.output
    finally:
        await fed.stop()
