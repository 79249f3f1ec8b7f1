"""The checks every peer request passes, in order, before any handler sees it.

Kept apart from aiohttp so the order is readable in one place: member (by TLS peer
certificate) → signed headers → signer is the TLS peer → addressed to us → validity
window → (body read, bounded) → body hash and signature → nonce not seen before.

The nonce cache lives in memory, so a restart forgets it. A request signed before the
server started is therefore refused as stale: a captured request cannot be replayed
after a restart (the window left is the sender's clock lead, which NTP keeps small).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from node.net.nonces import NonceCache
from node.net.reqsign import (RequestRefused, SignedHeaders, check_signature, check_window,
                              parse_headers)
from node.net.roster import Member
from node.net.rosterbook import RosterBook


@dataclass(frozen=True)
class GuardSettings:
    request_lifetime_s: int = 60   # longest validity a sender may give a request
    clock_skew_s: int = 30         # tolerated clock difference between sites


class RequestGuard:
    def __init__(self, own_node_id: str, roster: RosterBook, nonces: NonceCache,
                 settings: GuardSettings, *, not_before: float = 0.0) -> None:
        self.own_node_id = own_node_id
        self.not_before = int(not_before)  # whole seconds, as request timestamps are
        self.roster = roster
        self.nonces = nonces
        self.settings = settings

    def member_for(self, peer_node_id: str) -> Member:
        status = self.roster.status(peer_node_id)
        if status == "revoked":
            raise RequestRefused(403, "revoked", "this node's membership has been revoked")
        member = self.roster.member(peer_node_id)
        if member is None:
            raise RequestRefused(403, "not_member",
                                 "certificate is valid but the node is not on the roster")
        return member

    def before_body(self, peer_node_id: str, headers: Mapping[str, str], *,
                    now: float) -> tuple[Member, SignedHeaders]:
        member = self.member_for(peer_node_id)
        signed = parse_headers(headers)
        if signed.sender != peer_node_id:
            raise RequestRefused(403, "signer_mismatch",
                                 "request is signed by another node than the TLS peer")
        if signed.recipient != self.own_node_id:
            raise RequestRefused(403, "wrong_recipient", "request is addressed to another node")
        check_window(signed, now=now, max_lifetime_s=self.settings.request_lifetime_s,
                     skew_s=self.settings.clock_skew_s)
        if signed.timestamp < self.not_before:
            raise RequestRefused(401, "stale", "request was signed before this node restarted "
                                 "(resend it; if this persists, check the sender's clock / NTP)")
        return member, signed

    def after_body(self, member: Member, signed: SignedHeaders, method: str, path: str,
                   body: bytes, *, now: float) -> None:
        check_signature(signed, member.verify_key, method, path, body)
        seen = self.nonces.remember(signed.sender, signed.nonce,
                                    signed.expires + self.settings.clock_skew_s, now)
        if seen == "replay":
            raise RequestRefused(409, "replay", "request nonce was already used (replay)")
        if seen == "full":
            raise RequestRefused(503, "busy", "too many requests in flight; retry shortly")
