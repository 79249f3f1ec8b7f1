"""The peer port's server sends no TLS 1.3 session tickets (nothing resumes sessions)."""

from __future__ import annotations

import ssl
from pathlib import Path

from node.net.pki import node_dns_name
from node.net.testbed import LocalMember, build_federation
from node.net.tls import client_context, server_context


def _pump(src: ssl.MemoryBIO, dst: ssl.MemoryBIO) -> None:
    data = src.read()
    if data:
        dst.write(data)


def _close(*members: LocalMember) -> None:
    for m in members:
        if m.sock is not None:
            m.sock.close()


def _handshake(server_files_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
               hostname: str) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_files_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, obj in (("c", client), ("s", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        _pump(c_out, s_in)
        _pump(s_out, c_in)
        if all(done.values()):
            break
    assert all(done.values())
    server.write(b"answer")                    # what follows the handshake on the wire
    _pump(s_out, c_in)
    assert client.read(100) == b"answer"
    return client, server


def test_server_sends_no_session_ticket(tmp_path: Path) -> None:
    _operator, (alpha, beta) = build_federation(tmp_path, ["alpha", "beta"])
    _close(alpha, beta)
    server_ctx = server_context(alpha.membership.paths.tls)
    assert server_ctx.num_tickets == 0
    client, _server = _handshake(server_ctx, client_context(beta.membership.paths.tls),
                                 node_dns_name(alpha.identity.node_id_hex))
    assert client.version() == "TLSv1.3"
    assert client.session is not None and not client.session.has_ticket


def test_default_server_context_would_send_tickets(tmp_path: Path) -> None:
    """The check above can fail: with OpenSSL's default the client does get a ticket."""
    _operator, (alpha, beta) = build_federation(tmp_path, ["alpha", "beta"])
    _close(alpha, beta)
    server_ctx = server_context(alpha.membership.paths.tls)
    server_ctx.num_tickets = 2
    client, _server = _handshake(server_ctx, client_context(beta.membership.paths.tls),
                                 node_dns_name(alpha.identity.node_id_hex))
    assert client.session is not None and client.session.has_ticket
