"""First-flight connections (Noise IK, ``node.net.firstflight``) on the real peer port."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from dataclasses import replace
from typing import Any

import pytest

from node.identity import NodeIdentity
from node.net.client import PeerClient
from node.net.errors import PeerError
from node.net.firstflight.frames import MAGIC, frame
from node.net.firstflight.noise_ik import StaticKey, initiator
from node.net.reqsign import sign_request

from tests.net.test_peer_api import Fed, audited_handshakes, client_of, fed  # noqa: F401  (the fixture)


class Relay:
    """A TCP relay in front of alpha that records each connection's bytes in order, as
    (direction, bytes) with direction ">" client to server, "<" back; ``flip`` corrupts
    one byte of the server's answer at that offset."""

    def __init__(self, target: tuple[str, int], flip: int | None = None) -> None:
        self.target, self.flip = target, flip
        self.log: list[list[tuple[str, bytes]]] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> "Relay":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def address(self) -> str:
        assert self.server is not None
        return "127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(*self.target)
        log: list[tuple[str, bytes]] = []
        self.log.append(log)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, way: str) -> None:
            seen = 0
            while data := await src.read(1 << 16):
                if way == "<" and self.flip is not None and seen <= self.flip < seen + len(data):
                    i = self.flip - seen
                    data = data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]
                seen += len(data)
                log.append((way, data))
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pump(cr, sw, ">"), pump(sr, cw, "<"), return_exceptions=True)


def first_flight_client(f: Fed, node: Any = None, **kw: Any) -> PeerClient:
    node = node or f.beta
    return PeerClient(node.identity, node.membership.client_tls(), roster=node.membership.roster,
                      first_flight=True, **kw)


def _address(f: Fed) -> tuple[str, int]:
    host, port = f.alpha.member.peer_address.rsplit(":", 1)
    return host, int(port)


async def test_call_and_stream_over_first_flight(fed: Fed) -> None:  # noqa: F811
    async with first_flight_client(fed) as client:
        got = await client.call(fed.alpha.member, "POST", "/v1/echo", {"q": [1, "CT"]}, timeout=5)
        assert got == {"from": "beta", "got": {"q": [1, "CT"]}}
        parts = [c async for c in client.stream(fed.alpha.member, "POST", "/v1/chunks", {"n": 40},
                                                timeout=5)]
        body = b"".join(parts)
        assert len(body) == 40 * 70_000 and body[-1] == 39
        again = await client.call(fed.alpha.member, "POST", "/v1/echo", {"x": "y" * 30_000},
                                  timeout=5)
        assert again["got"]["x"] == "y" * 30_000
    assert [e for e in fed.audit.entries if e["action"] == "peer.tls"] == []


# -- a hand-made first-flight client (independent of PeerClient and aiohttp) -------------

def _http_request(f: Fed, sender: Any, body: bytes, path: str = "/v1/echo",
                  identity: NodeIdentity | None = None) -> bytes:
    target = f.alpha.member
    headers = sign_request(identity or sender.identity, target.node_id, "POST", path, body,
                           now=time.time(), lifetime_s=60).to_headers()
    lines = [f"POST {path} HTTP/1.1", f"Host: {target.peer_address}",
             "Content-Type: application/json", f"Content-Length: {len(body)}",
             "Connection: close"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_frames(reader: asyncio.StreamReader) -> list[bytes]:
    frames: list[bytes] = []
    while True:
        head = await _exactly(reader, 2)
        if head is None:
            return frames
        (size,) = struct.unpack(">H", head)
        body = await _exactly(reader, size)
        if body is None:
            return frames
        frames.append(body)


async def _exactly(reader: asyncio.StreamReader, n: int) -> bytes | None:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        return None


async def hand_made(f: Fed, static: bytes, server_key: bytes, request: bytes, *,
                    byte_by_byte: bool = False, first: bytes | None = None
                    ) -> tuple[bytes | None, bytes]:
    """Send message 1 (``first`` instead, if given); returns (the decrypted HTTP answer or
    None if the server did not complete the handshake, the first message 1 sent)."""
    conn = initiator(StaticKey(static), server_key)
    message1 = first if first is not None else MAGIC + frame(conn.write_message(request))
    reader, writer = await asyncio.open_connection(*_address(f))
    try:
        if byte_by_byte:
            for i in range(len(message1)):
                writer.write(message1[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0)
        else:
            writer.write(message1)
        frames = await asyncio.wait_for(_read_frames(reader), 10)
    finally:
        writer.close()
    if not frames or first is not None:
        return None, message1
    conn.read_message(frames[0])
    return b"".join(conn.decrypt(m) for m in frames[1:]), message1


def _status_and_json(answer: bytes) -> tuple[int, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def test_a_hand_made_client_byte_by_byte_gets_the_answer(fed: Fed) -> None:  # noqa: F811
    request = _http_request(fed, fed.beta, b'{"q":"hand"}')
    answer, _ = await hand_made(fed, bytes(fed.beta.identity.box_key), fed.alpha.member.box_key,
                                request, byte_by_byte=True)
    assert answer is not None
    assert _status_and_json(answer) == (200, {"from": "beta", "got": {"q": "hand"}})


async def test_a_replayed_message_1_is_refused_and_audited(fed: Fed) -> None:  # noqa: F811
    request = _http_request(fed, fed.beta, b'{"q":"once"}')
    answer, message1 = await hand_made(fed, bytes(fed.beta.identity.box_key),
                                       fed.alpha.member.box_key, request)
    assert answer is not None and _status_and_json(answer)[0] == 200
    replayed, _ = await hand_made(fed, bytes(fed.beta.identity.box_key),
                                  fed.alpha.member.box_key, b"", first=message1)
    assert replayed is None        # the eavesdropper cannot read what the server answered
    for _ in range(100):
        if fed.audit.refusals("replay"):
            break
        await asyncio.sleep(0.02)
    assert len(fed.audit.refusals("replay")) == 1
    echoed = [e for e in fed.audit.entries if e["outcome"] == "ok"]
    assert echoed == []            # /v1/echo audits nothing itself; the replay was refused


async def test_a_non_member_key_is_refused_before_any_request_is_read(fed: Fed) -> None:  # noqa: F811
    stranger = NodeIdentity.generate()
    request = _http_request(fed, fed.beta, b'{"q":1}', identity=stranger)
    answer, _ = await hand_made(fed, bytes(stranger.box_key), fed.alpha.member.box_key, request)
    assert answer is None
    refused = await audited_handshakes(fed)
    assert len(refused) == 1 and "not an active member" in refused[0]["reason"]


async def test_a_client_pinning_another_key_learns_nothing(fed: Fed) -> None:  # noqa: F811
    """Message 1 sealed to gamma's key, sent to alpha: alpha cannot read it and refuses."""
    request = _http_request(fed, fed.beta, b'{"q":1}')
    answer, _ = await hand_made(fed, bytes(fed.beta.identity.box_key), fed.gamma.member.box_key,
                                request)
    assert answer is None
    refused = await audited_handshakes(fed)
    assert len(refused) == 1 and "does not verify" in refused[0]["reason"]


@pytest.mark.parametrize("garbage", [b"MFF1" + b"\x00\x10" + b"\x07" * 16, b"MFX9hello",
                                     b"MFF1" + b"\xff" * 3000])
async def test_garbage_after_the_magic_is_refused_and_the_port_keeps_serving(
        fed: Fed, garbage: bytes) -> None:  # noqa: F811
    answer, _ = await hand_made(fed, bytes(fed.beta.identity.box_key), fed.alpha.member.box_key,
                                b"", first=garbage)
    assert answer is None          # the last one never completes a frame: the deadline ends it
    refused = await audited_handshakes(fed)
    assert len(refused) == 1
    async with first_flight_client(fed) as client:
        assert (await client.call(fed.alpha.member, "POST", "/v1/echo", {}, timeout=5))["from"] == "beta"


async def test_the_request_leaves_before_the_server_has_sent_a_byte(fed: Fed) -> None:  # noqa: F811
    """What makes it first flight: the whole signed request (here a 20 kB body) is on the
    wire before anything came back; over TLS the client would wait for the handshake."""
    async with Relay(_address(fed)) as relay, first_flight_client(fed) as client:
        via = replace(fed.alpha.member, peer_address=relay.address)
        got = await client.call(via, "POST", "/v1/echo", {"x": "y" * 20_000}, timeout=5)
        assert got["got"]["x"] == "y" * 20_000
    (log,) = relay.log
    before_answer = b"".join(data for way, data in log[:[w for w, _ in log].index("<")])
    assert before_answer.startswith(MAGIC)
    assert len(before_answer) > 20_000            # the request, sealed in message 1
    assert all(way == ">" for way, _ in log[:1])
    assert b"y" * 100 not in before_answer          # and not in clear


async def test_an_answer_altered_on_the_way_is_not_delivered(fed: Fed) -> None:  # noqa: F811
    async with Relay(_address(fed), flip=200) as relay, first_flight_client(fed) as client:
        via = replace(fed.alpha.member, peer_address=relay.address)
        with pytest.raises(PeerError):
            [c async for c in client.stream(via, "POST", "/v1/chunks", {"n": 3}, timeout=5)]


async def test_a_request_larger_than_message_1_goes_on_after_the_handshake(fed: Fed) -> None:  # noqa: F811
    async with first_flight_client(fed) as client:
        got = await client.call(fed.alpha.member, "POST", "/v1/echo", {"x": "z" * 65_000},
                                timeout=5)
    assert got["got"]["x"] == "z" * 65_000


async def test_magic_alone_times_out_and_is_audited(fed: Fed) -> None:  # noqa: F811
    reader, writer = await asyncio.open_connection(*_address(fed))
    writer.write(MAGIC)
    assert await asyncio.wait_for(reader.read(), 10) == b""      # closed by the server
    writer.close()
    refused = await audited_handshakes(fed)
    assert len(refused) == 1 and "in time" in refused[0]["reason"]


async def test_tls_clients_are_served_on_the_same_port(fed: Fed) -> None:  # noqa: F811
    async with client_of(fed.beta) as tls, first_flight_client(fed, fed.gamma) as sealed:
        a, b = await asyncio.gather(
            tls.call(fed.alpha.member, "POST", "/v1/echo", {"v": "tls"}, timeout=5),
            sealed.call(fed.alpha.member, "POST", "/v1/echo", {"v": "ff"}, timeout=5))
    assert (a["from"], a["got"], b["from"], b["got"]) == ("beta", {"v": "tls"}, "gamma", {"v": "ff"})


async def test_the_server_counts_connections_by_handshake(fed: Fed) -> None:  # noqa: F811
    assert fed.server is not None
    async with client_of(fed.beta) as tls, first_flight_client(fed, fed.gamma) as sealed:
        await tls.call(fed.alpha.member, "POST", "/v1/echo", {}, timeout=5)
        await sealed.call(fed.alpha.member, "POST", "/v1/echo", {}, timeout=5)
        await sealed.call(fed.alpha.member, "POST", "/v1/echo", {}, timeout=5)   # pooled
    assert fed.server.connections() == {"tls": 1, "first_flight": 1}


async def test_an_unused_preconnect_closes_without_a_refusal_but_junk_is_audited(fed: Fed) -> None:  # noqa: F811
    async with first_flight_client(fed) as client:
        assert await client.preconnect(fed.alpha.member, timeout=5) is True   # TCP only
    reader, writer = await asyncio.open_connection(*_address(fed))
    writer.write(b"GET / HTTP/1.0\r\n\r\n")     # then a knock with junk: refused
    await asyncio.wait_for(reader.read(), 10)
    writer.close()
    refused = await audited_handshakes(fed)
    assert fed.server is not None
    site = fed.server._site         # accepted before the knock: wait until it was handled too
    for _ in range(1000):
        if not site._pending:       # type: ignore[union-attr]
            break
        await asyncio.sleep(0.01)
    refused = await audited_handshakes(fed)
    assert len(refused) == 1 and "TLS handshake failed" in refused[0]["reason"], refused
    assert fed.server._handshakes._count == 0     # none more, held back for the summary
    assert fed.server.connections() == {"tls": 0, "first_flight": 0}


async def test_stopping_the_server_ends_a_handshake_under_way_without_a_refusal(fed: Fed) -> None:  # noqa: F811
    reader, writer = await asyncio.open_connection(*_address(fed))
    writer.write(MAGIC)                    # message 1 never comes
    await writer.drain()
    assert fed.server is not None
    site = fed.server._site
    for _ in range(500):                   # until the server has taken the connection over
        if site._handshaking:              # type: ignore[union-attr]
            break
        await asyncio.sleep(0.01)
    assert len(site._handshaking) == 1     # type: ignore[union-attr]
    await fed.server.stop()
    assert await asyncio.wait_for(reader.read(), 5) == b""     # closed at once, not at 3 s
    writer.close()
    assert [e for e in fed.audit.entries if e["action"] == "peer.tls"] == []
