"""``PeerClient.preconnect``: TCP + TLS paid ahead, over real mutual TLS on loopback."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace

from node.net.client import PeerClient

from tests.net.test_peer_api import Fed, client_of, fed  # noqa: F401  (the fixture)


async def _stream(client: PeerClient, f: Fed, dials: list[str], label: str) -> bytes:
    parts = [c async for c in client.stream(f.alpha.member, "POST", "/v1/chunks", {"n": 2},
                                            timeout=5, on_dial=lambda: dials.append(label))]
    return b"".join(parts)


async def test_request_without_pooled_connection_reports_its_dial(fed: Fed) -> None:  # noqa: F811
    dials: list[str] = []
    async with client_of(fed.beta) as client:
        assert len(await _stream(client, fed, dials, "first")) == 140_000
        assert len(await _stream(client, fed, dials, "second")) == 140_000   # pooled now
    assert dials == ["first"]


async def test_preconnect_leaves_a_pooled_connection_the_next_request_uses(fed: Fed) -> None:  # noqa: F811
    dials: list[str] = []
    async with client_of(fed.beta) as client:
        assert await client.preconnect(fed.alpha.member, timeout=5) is True
        assert await client.preconnect(fed.alpha.member, timeout=5) is True   # reused, not doubled
        assert len(await _stream(client, fed, dials, "after")) == 140_000
    assert dials == []
    assert fed.audit.entries == []         # nothing was asked above TLS


async def test_request_made_while_preconnect_is_under_way_waits_for_it(fed: Fed) -> None:  # noqa: F811
    dials: list[str] = []
    async with client_of(fed.beta) as client:
        dial = client.preconnect(fed.alpha.member, timeout=5)
        assert client.preconnect(fed.alpha.member, timeout=5) is dial      # one dial per member
        assert not dial.done()
        assert len(await _stream(client, fed, dials, "meanwhile")) == 140_000
        assert dial.result() is True
    assert dials == []


async def test_preconnect_to_a_closed_port_fails_quietly_and_is_remembered(fed: Fed) -> None:  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # nothing listens here once closed
    gone = replace(fed.alpha.member, peer_address=f"127.0.0.1:{port}")
    async with client_of(fed.beta) as client:
        assert await client.preconnect(gone, timeout=5) is False
        assert client.connect_failed_within(gone.node_id, 5) is not None


async def test_close_cancels_a_preconnect_under_way(fed: Fed) -> None:  # noqa: F811
    client = client_of(fed.beta)
    dial = client.preconnect(fed.alpha.member, timeout=5)
    await client.close()
    await asyncio.sleep(0)
    assert dial.done()
