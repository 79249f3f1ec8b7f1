"""Peer API over real mutual TLS on loopback: who gets in, what is refused, what is audited."""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from node.identity import NodeIdentity
from node.net.assertion import accept_assertion, issue_assertion
from node.net.client import PeerClient
from node.net.errors import PeerRefused, PeerTimeout, PeerUnreachable
from node.net.federation import admit, revoke
from node.net.membership import Membership, MembershipPaths, create_request, install_bundle
from node.net.pki import node_dns_name
from node.net.reqsign import H_SIGNATURE, RequestRefused, sign_request
from node.net.roster_sync import announce, pull_roster
from node.net.server import PeerRequest, PeerServer, PeerServerSettings
from node.net.testbed import LocalMember, build_federation, reserve_socket
from node.net.tls import TLSFiles, client_context
from node.policy import Level, decide, load_policy, suppress_count

POLICY = load_policy("""
[[rule]]
name = "research counts"
role = "researcher"
purpose = "research"
level = "count"
""")


class AuditStub:
    """List-collecting stand-in for node.audit.AuditLog (same append signature)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def append(self, action: str, actor: str, outcome: str, subject: str = "",
               **detail: str | int | float | bool) -> None:
        self.entries.append({"action": action, "actor": actor, "outcome": outcome,
                             "subject": subject, **detail})

    def refusals(self, code: str) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["outcome"] == "refused" and e.get("code") == code]


class Fed:
    def __init__(self, operator: Path, nodes: list[LocalMember], tmp: Path) -> None:
        self.operator, self.nodes, self.tmp = operator, nodes, tmp
        self.alpha, self.beta, self.gamma = nodes
        self.audit = AuditStub()
        self.server: PeerServer | None = None


async def _echo(call: PeerRequest) -> dict[str, Any]:
    return {"from": call.sender.name, "got": call.json}


async def _boom(call: PeerRequest) -> dict[str, Any]:
    raise KeyError("patient 12345 not found")  # text must not reach the caller


async def _slow(call: PeerRequest) -> dict[str, Any]:
    await asyncio.sleep(5)
    return {}


async def _chunks(call: PeerRequest) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(call.http)
    for i in range(int(call.json.get("n", 3))):
        await resp.write(bytes([i]) * 70_000)
    await resp.write_eof()
    return resp


@pytest.fixture()
async def fed(tmp_path: Path) -> AsyncIterator[Fed]:
    operator, nodes = build_federation(tmp_path, ["alpha", "beta", "gamma"])
    f = Fed(operator, nodes, tmp_path)
    a = f.alpha
    server = PeerServer(a.identity, a.membership.roster, a.membership.server_tls(), audit=f.audit,
                        settings=PeerServerSettings(body_limit=64 << 10, handshake_timeout_s=3))

    async def counted(call: PeerRequest) -> dict[str, Any]:
        asserted = accept_assertion(call.json.get("assertion"), a.membership.roster.current,
                                    call.sender.node_id, now=time.time())
        decision = decide(POLICY, asserted, call.sender)
        if decision.level is Level.DENY:
            raise RequestRefused(403, "policy_denied", decision.reason)
        return {"level": decision.level.value, "count": suppress_count(3)}

    server.add_route("POST", "/v1/echo", _echo)
    server.add_route("POST", "/v1/boom", _boom)
    server.add_route("POST", "/v1/slow", _slow)
    server.add_route("POST", "/v1/chunks", _chunks)
    server.add_route("POST", "/v1/count", counted)
    await server.start(sock=a.sock)
    f.server = server
    yield f
    await server.stop()
    for node in nodes:
        node.sock.close()


async def audited_handshakes(f: Fed, at_least: int = 1) -> list[dict[str, Any]]:
    """The server audits a refused handshake as the client gives up; wait for it (max 3 s)."""
    deadline = time.monotonic() + 3
    while True:
        found = [e for e in f.audit.entries if e["action"] == "peer.tls"]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.02)


def client_of(node: LocalMember, **kw: Any) -> PeerClient:
    return PeerClient(node.identity, node.membership.client_tls(), **kw)


async def raw_call(f: Fed, sender: LocalMember, path: str, body: bytes, *,
                   identity: NodeIdentity | None = None, recipient: str | None = None,
                   headers: dict[str, str] | None = None, body_sent: bytes | None = None
                   ) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A hand-made request over the sender's real mTLS connection (for forgeries/replays)."""
    target = f.alpha.member
    h = headers or sign_request(identity or sender.identity, recipient or target.node_id,
                                "POST", path, body, now=time.time(), lifetime_s=60).to_headers()
    connector = aiohttp.TCPConnector(ssl=sender.membership.client_tls())
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(URL(f"https://{target.peer_address}{path}", encoded=True),
                                data=body if body_sent is None else body_sent, headers=h,
                                server_hostname=node_dns_name(target.node_id),
                                timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status, await resp.json(), h


def assert_refused_and_audited(f: Fed, status: int, code: str, got_status: int,
                               body: dict[str, Any]) -> None:
    assert (got_status, body["error"]) == (status, code)
    assert len(body["reason"]) > 10
    entries = f.audit.refusals(code)
    assert len(entries) == 1, f"expected one audit entry for {code}, got {f.audit.entries}"
    assert entries[0]["reason"] == body["reason"]


async def refused_call(sender: LocalMember, target: LocalMember, path: str,
                       json: dict[str, Any], **client_kw: Any) -> PeerRefused:
    """Call through PeerClient and return the refusal (fails the test if none comes)."""
    async with client_of(sender, **client_kw) as client:
        with pytest.raises(PeerRefused) as err:
            await client.call(target.member, "POST", path, json, timeout=5)
    return err.value


def assert_client_refused(f: Fed, status: int, code: str, refusal: PeerRefused) -> None:
    assert_refused_and_audited(f, status, code, refusal.status,
                               {"error": refusal.code, "reason": refusal.reason})


# -- the happy path -----------------------------------------------------------
async def test_member_call_round_trip_and_roster_fetch(fed: Fed) -> None:
    async with client_of(fed.beta) as client:
        got = await client.call(fed.alpha.member, "POST", "/v1/echo", {"q": [1, "CT"]}, timeout=5)
        assert got == {"from": "beta", "got": {"q": [1, "CT"]}}
        assert await pull_roster(client, fed.beta.membership.roster, fed.alpha.member,
                                 timeout=5) is False  # same version: nothing new
    assert fed.audit.entries == []


async def test_streaming_response_arrives_whole_and_in_order(fed: Fed) -> None:
    async with client_of(fed.beta) as client:
        parts = [c async for c in client.stream(fed.alpha.member, "POST", "/v1/chunks",
                                                {"n": 4}, timeout=5, chunk_size=50_000)]
    data = b"".join(parts)
    assert len(parts) > 1
    assert data == b"".join(bytes([i]) * 70_000 for i in range(4))


# -- handshake refusals --------------------------------------------------------
def _foreign_client_ctx(f: Fed) -> ssl.SSLContext:
    """A node of another federation that trusts our CA but holds a certificate from its own."""
    _, (mallory,) = build_federation(f.tmp / "other", ["mallory"], federation="Other")
    mallory.sock.close()
    files = mallory.membership.paths.tls
    return client_context(TLSFiles(files.key, files.cert, f.alpha.membership.paths.ca_cert))


async def test_non_member_certificate_refused_at_handshake_and_audited(fed: Fed) -> None:
    mallory = PeerClient(NodeIdentity.generate(), _foreign_client_ctx(fed))
    async with mallory:
        # TLS 1.3: the server judges the client certificate after the client has finished
        # its side, so the client sees the connection drop rather than an alert.
        with pytest.raises((PeerRefused, PeerUnreachable)):
            await mallory.call(fed.alpha.member, "POST", "/v1/echo", {}, timeout=5)
    tls = await audited_handshakes(fed)
    assert len(tls) == 1 and tls[0]["outcome"] == "refused"
    assert "certificate" in tls[0]["reason"].lower()


async def test_client_without_certificate_refused_and_audited(fed: Fed) -> None:
    ctx = ssl.create_default_context(cafile=str(fed.alpha.membership.paths.ca_cert))
    connector = aiohttp.TCPConnector(ssl=ctx)
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.post(f"https://{fed.alpha.member.peer_address}/v1/echo",
                                   server_hostname=node_dns_name(fed.alpha.member.node_id),
                                   timeout=aiohttp.ClientTimeout(total=5)) as resp:
                await resp.read()
    await audited_handshakes(fed)
    assert [e["action"] for e in fed.audit.entries] == ["peer.tls"]


async def test_client_pins_the_member_it_meant_to_call(fed: Fed) -> None:
    impostor = replace(fed.beta.member, peer_address=fed.alpha.member.peer_address)
    async with client_of(fed.gamma) as client:
        with pytest.raises(PeerRefused) as err:
            await client.call(impostor, "POST", "/v1/echo", {}, timeout=5)
    assert err.value.code == "tls_refused" and "mismatch" in err.value.reason.lower()


# -- request-level refusals, each audited with its reason ------------------------
async def test_revoked_member_refused(fed: Fed) -> None:
    fed.alpha.membership.roster.offer(revoke(fed.operator, fed.gamma.identity.node_id_hex))
    refusal = await refused_call(fed.gamma, fed.alpha, "/v1/echo", {})
    assert_client_refused(fed, 403, "revoked", refusal)
    assert fed.audit.refusals("revoked")[0]["actor"] == fed.gamma.identity.node_id_hex


async def test_client_with_roster_does_not_call_revoked_members(fed: Fed) -> None:
    book = fed.beta.membership.roster
    book.offer(revoke(fed.operator, fed.alpha.identity.node_id_hex))
    async with client_of(fed.beta, roster=book) as client:
        with pytest.raises(PeerRefused) as err:
            await client.call(fed.alpha.member, "POST", "/v1/echo", {}, timeout=5)
    assert (err.value.status, err.value.code) == (0, "revoked")
    assert fed.audit.entries == []  # nothing was sent


async def test_forged_signature_refused(fed: Fed) -> None:
    body = b'{"q":1}'
    headers = sign_request(fed.beta.identity, fed.alpha.member.node_id, "POST", "/v1/echo",
                           body, now=time.time(), lifetime_s=60).to_headers()
    forged = NodeIdentity.generate().sign(b"anything")
    headers[H_SIGNATURE] = base64.b64encode(forged).decode()
    status, doc, _ = await raw_call(fed, fed.beta, "/v1/echo", body, headers=headers)
    assert_refused_and_audited(fed, 401, "bad_signature", status, doc)


async def test_body_swapped_after_signing_refused(fed: Fed) -> None:
    status, doc, _ = await raw_call(fed, fed.beta, "/v1/echo", b'{"q":1}', body_sent=b'{"q":2}')
    assert_refused_and_audited(fed, 401, "body_mismatch", status, doc)


async def test_signer_other_than_tls_peer_refused(fed: Fed) -> None:
    status, doc, _ = await raw_call(fed, fed.beta, "/v1/echo", b"{}",
                                    identity=fed.gamma.identity)
    assert_refused_and_audited(fed, 403, "signer_mismatch", status, doc)


async def test_request_addressed_to_another_node_refused(fed: Fed) -> None:
    status, doc, _ = await raw_call(fed, fed.beta, "/v1/echo", b"{}",
                                    recipient=fed.gamma.identity.node_id_hex)
    assert_refused_and_audited(fed, 403, "wrong_recipient", status, doc)


async def test_replayed_request_refused(fed: Fed) -> None:
    status, doc, headers = await raw_call(fed, fed.beta, "/v1/echo", b'{"q":1}')
    assert status == 200 and doc["got"] == {"q": 1}
    status, doc, _ = await raw_call(fed, fed.beta, "/v1/echo", b'{"q":1}', headers=headers)
    assert_refused_and_audited(fed, 409, "replay", status, doc)


@pytest.mark.parametrize("shift,code", [(-200.0, "expired"), (+200.0, "not_yet_valid")])
async def test_expired_or_future_request_refused(fed: Fed, shift: float, code: str) -> None:
    refusal = await refused_call(fed.beta, fed.alpha, "/v1/echo", {},
                                 clock=lambda: time.time() + shift)
    assert_client_refused(fed, 401, code, refusal)


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe"])
async def test_malformed_json_gets_400(fed: Fed, body: bytes) -> None:
    status, doc, _ = await raw_call(fed, fed.beta, "/v1/echo", body)
    assert_refused_and_audited(fed, 400, "malformed_json", status, doc)


async def test_oversized_body_gets_413(fed: Fed) -> None:
    refusal = await refused_call(fed.beta, fed.alpha, "/v1/echo", {"x": "y" * (70 << 10)})
    assert_client_refused(fed, 413, "body_too_large", refusal)
    async with client_of(fed.beta) as client:
        ok = await client.call(fed.alpha.member, "POST", "/v1/echo", {"x": "y" * 1000},
                               timeout=5)
    assert ok["got"]["x"] == "y" * 1000


# -- assertions and policy at the serving site ---------------------------------------
def _assertion_doc(node: LocalMember, *, now: float, role: str = "researcher",
                   purpose: str = "research") -> dict[str, Any]:
    return issue_assertion(node.identity, user="u-77", role=role, department="Cardiology",
                           purpose=purpose, now=now, ttl_s=60).to_dict()


async def test_valid_assertion_gets_policy_level_answer(fed: Fed) -> None:
    async with client_of(fed.beta) as client:
        got = await client.call(fed.alpha.member, "POST", "/v1/count",
                                {"assertion": _assertion_doc(fed.beta, now=time.time())},
                                timeout=5)
    assert got == {"level": "count", "count": "<5"}
    treatment = _assertion_doc(fed.beta, now=time.time(), role="clinician", purpose="treatment")
    refusal = await refused_call(fed.beta, fed.alpha, "/v1/count", {"assertion": treatment})
    assert_client_refused(fed, 403, "policy_denied", refusal)


async def test_expired_assertion_refused(fed: Fed) -> None:
    stale = _assertion_doc(fed.beta, now=time.time() - 600)
    refusal = await refused_call(fed.beta, fed.alpha, "/v1/count", {"assertion": stale})
    assert_client_refused(fed, 403, "assertion_expired", refusal)


async def test_assertion_relayed_by_another_member_refused(fed: Fed) -> None:
    betas = _assertion_doc(fed.beta, now=time.time())
    refusal = await refused_call(fed.gamma, fed.alpha, "/v1/count", {"assertion": betas})
    assert_client_refused(fed, 403, "assertion_wrong_site", refusal)


# -- failures of the callee ------------------------------------------------------
async def test_handler_crash_is_500_without_details_and_audited(fed: Fed) -> None:
    async with client_of(fed.beta) as client:
        with pytest.raises(PeerRefused) as err:
            await client.call(fed.alpha.member, "POST", "/v1/boom", {}, timeout=5)
        assert await client.call(fed.alpha.member, "POST", "/v1/echo", {}, timeout=5)
    assert err.value.status == 500 and "12345" not in str(err.value)
    assert [e["outcome"] for e in fed.audit.entries] == ["error"]


async def test_deadline_gives_peer_timeout(fed: Fed) -> None:
    async with client_of(fed.beta) as client:
        started = time.monotonic()
        with pytest.raises(PeerTimeout):
            await client.call(fed.alpha.member, "POST", "/v1/slow", {}, timeout=0.5)
    assert time.monotonic() - started < 30   # the deadline, not forever (a loaded host)


async def test_down_member_is_unreachable_and_stop_is_clean(fed: Fed) -> None:
    closed = reserve_socket()
    gone = replace(fed.gamma.member, peer_address=f"127.0.0.1:{closed.getsockname()[1]}")
    closed.close()
    async with client_of(fed.beta) as client:
        assert client.connect_failed_within(gone.node_id, 60) is None
        with pytest.raises(PeerUnreachable):
            await client.call(gone, "POST", "/v1/echo", {}, timeout=3)
        ago = client.connect_failed_within(gone.node_id, 60)   # the fetch's "owner just down"
        assert ago is not None and 0 <= ago < 60
        assert client.connect_failed_within(fed.alpha.member.node_id, 60) is None
        await client.call(fed.alpha.member, "POST", "/v1/echo", {}, timeout=10)
        assert client.connect_failed_within(fed.alpha.member.node_id, 60) is None
        await client.close()                  # a cold client remembers nothing
        assert client.connect_failed_within(gone.node_id, 60) is None
        assert fed.server is not None
        await fed.server.stop()
        with pytest.raises(PeerUnreachable):
            await client.call(fed.alpha.member, "POST", "/v1/echo", {}, timeout=3)


# -- joining a running federation --------------------------------------------------
def _admit_delta(f: Fed) -> tuple[NodeIdentity, Membership]:
    delta = NodeIdentity.generate()
    paths = MembershipPaths.under(f.tmp / "delta")
    request = create_request(delta, paths, name="delta", peer_address="127.0.0.1:1",
                             dht_address="127.0.0.1:1", dicom_ae="DELTA")
    return delta, install_bundle(admit(f.operator, request.to_json()).to_json(), delta, paths)


async def test_new_member_brings_its_roster_to_the_bootstrap_peer(fed: Fed) -> None:
    delta, membership = _admit_delta(fed)
    assert fed.alpha.membership.roster.status(delta.node_id_hex) == "unknown"
    async with PeerClient(delta, membership.client_tls()) as client:
        assert await announce(client, membership.roster, fed.alpha.member.peer_address,
                              timeout=5) is True
        got = await client.call(fed.alpha.member, "POST", "/v1/echo", {}, timeout=5)
    assert got["from"] == "delta"
    assert fed.alpha.membership.roster.status(delta.node_id_hex) == "member"


async def test_unknown_member_cannot_push_forged_roster(fed: Fed) -> None:
    """A CA-certified but unlisted node offering a roster the CA did not sign stays out."""
    delta, membership = _admit_delta(fed)
    signed = membership.roster.signed.to_dict()
    signed["roster"]["version"] += 1  # tampered: signature no longer matches
    async with PeerClient(delta, membership.client_tls()) as client:
        with pytest.raises(PeerRefused) as err:
            await client.call(fed.alpha.member, "POST", "/v1/roster", signed, timeout=5)
    assert err.value.code == "not_member"
    assert fed.alpha.membership.roster.status(delta.node_id_hex) == "unknown"
    assert len(fed.audit.refusals("not_member")) == 1


async def test_request_signed_before_a_restart_is_refused_as_stale(fed: Fed) -> None:
    """The replay cache is in memory: after a restart, requests signed before it are stale."""
    from node.net.guard import GuardSettings, RequestGuard
    from node.net.nonces import NonceCache
    from node.net.reqsign import sign_request

    now = time.time()
    signed = sign_request(fed.beta.identity, fed.alpha.identity.node_id_hex, "POST", "/v1/echo",
                          b"{}", now=now, lifetime_s=60)
    roster = fed.alpha.membership.roster

    def guard(started: float) -> RequestGuard:
        return RequestGuard(fed.alpha.identity.node_id_hex, roster, NonceCache(100),
                            GuardSettings(), not_before=started)

    member, _ = guard(now).before_body(fed.beta.identity.node_id_hex, signed.to_headers(),
                                       now=now + 1)
    assert member.node_id == fed.beta.identity.node_id_hex
    with pytest.raises(RequestRefused) as refused:
        guard(now + 2).before_body(fed.beta.identity.node_id_hex, signed.to_headers(),
                                   now=now + 3)
    assert (refused.value.status, refused.value.code) == (401, "stale")
