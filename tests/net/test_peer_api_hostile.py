"""Attacks on a running peer API (real mTLS on loopback): bodies that crash parsers, a
request replayed across a restart, and a flood of refused handshakes."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

import pytest

from node.net.client import PeerClient
from node.net.reqsign import sign_request
from node.net.server import PeerServer, PeerServerSettings
from tests.net.test_peer_api import (Fed, _echo, assert_refused_and_audited, audited_handshakes,
                                     fed, raw_call)

__all__ = ["fed"]   # the fixture, shared with test_peer_api

DEEP = b'{"q": ' + b"[" * 25_000 + b"]" * 25_000 + b"}"   # RecursionError in json.loads
NESTED_40 = b'{"q": ' + b'{"a": ' * 39 + b"1" + b"}" * 39 + b"}"


@pytest.mark.parametrize("body,code", [
    (DEEP, "too_deeply_nested"),
    (NESTED_40, "too_deeply_nested"),
    (b'{"q": "\\ud800"}', "bad_unicode"),
    (b'{"\\udfff": 1}', "bad_unicode"),
    (b'{"q": ["ok", {"deeper": "x\\udc00y"}]}', "bad_unicode"),
])
async def test_hostile_json_gets_400_with_a_reason_and_no_traceback(
        fed: Fed, body: bytes, code: str, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    status, doc, _ = await raw_call(fed, fed.beta, "/v1/echo", body)
    assert_refused_and_audited(fed, 400, code, status, doc)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    status, doc, _ = await raw_call(fed, fed.beta, "/v1/echo", b'{"q": ["fine", "\\u00e9"]}')
    assert status == 200 and doc["got"] == {"q": ["fine", "\u00e9"]}   # still serving


async def _restarted(f: Fed, journal: Path) -> PeerServer:
    assert f.server is not None
    await f.server.stop()
    server = PeerServer(f.alpha.identity, f.alpha.membership.roster,
                        f.alpha.membership.server_tls(), audit=f.audit,
                        settings=PeerServerSettings(nonce_journal=journal))
    server.add_route("POST", "/v1/echo", _echo)
    port = int(f.alpha.member.peer_address.rsplit(":", 1)[1])
    await server.start("127.0.0.1", port)   # the old listener closed its socket
    f.server = server
    return server


async def test_a_request_captured_before_a_restart_is_refused_after_it(
        fed: Fed, tmp_path: Path) -> None:
    journal = tmp_path / "alpha-nonces.log"
    await _restarted(fed, journal)
    # signed by a sender whose clock runs 20 s ahead: inside the allowed skew, and dated
    # after the restart, so only a remembered nonce can tell the replay apart
    headers = sign_request(fed.beta.identity, fed.alpha.member.node_id, "POST", "/v1/echo",
                           b'{"q":1}', now=time.time() + 20, lifetime_s=60).to_headers()
    status, doc, _ = await raw_call(fed, fed.beta, "/v1/echo", b'{"q":1}', headers=headers)
    assert status == 200, doc
    await _restarted(fed, journal)
    status, doc, _ = await raw_call(fed, fed.beta, "/v1/echo", b'{"q":1}', headers=headers)
    assert_refused_and_audited(fed, 409, "replay", status, doc)
    assert journal.stat().st_mode & 0o077 == 0


def _knock(port: int) -> None:
    """A TCP connection that sends junk instead of a TLS ClientHello."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n" * 4)
        try:
            s.recv(100)
        except OSError:
            pass


async def test_a_flood_of_refused_handshakes_is_summarised_not_logged_one_by_one(
        fed: Fed) -> None:
    port = int(fed.alpha.member.peer_address.rsplit(":", 1)[1])
    knocks = 40
    for _ in range(knocks):
        await asyncio.to_thread(_knock, port)
    await audited_handshakes(fed, at_least=1)
    assert fed.server is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while sum(1 for e in fed.audit.entries if e["action"] == "peer.tls") < 1 or (
            len(fed.audit.refusals("tls_refused")) + fed.server._handshakes._count < knocks):
        assert loop.time() < deadline, fed.audit.entries
        await asyncio.sleep(0.02)
    await fed.server.stop()               # closes the window: the summary is written
    tls = [e for e in fed.audit.entries if e["action"] == "peer.tls"]
    assert len(tls) == 2, tls
    first, summary = tls
    assert first["code"] == "tls_refused" and "TLS handshake failed" in first["reason"]
    assert summary["code"] == "tls_refused_summary" and summary["count"] == knocks - 1
    assert summary["sources"] == 1 and summary["named_sources"] == "127.0.0.1"
    # a member still gets in after the flood (a fresh server on the same socket)
    await _restarted(fed, fed.tmp / "nonces.log")
    async with PeerClient(fed.beta.identity, fed.beta.membership.client_tls()) as client:
        got = await client.call(fed.alpha.member, "POST", "/v1/echo", {"x": 1}, timeout=30)
    assert got["got"] == {"x": 1}
