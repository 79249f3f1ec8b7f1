"""The share holder's side of the release protocol: deposit, release, revoke.

A holder keeps the owner's share sealed to its own box key, and releases it only
re-sealed to the requesting node's box key, after checking the owner's signed release
policy and the requester's signed user assertion. The owner itself may take its share
back (to re-share after a holder left) without a user assertion: it made the key.
Every decision is audited with the bundle id as subject; no PHI exists at this layer.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from nacl.exceptions import CryptoError
from nacl.public import PublicKey, SealedBox

from node.audit.log import AuditLog
from node.identity import NodeIdentity
from node.keyshare.custody import Custody, CustodyConflict, HeldShare
from node.keyshare.release_policy import (ReleasePolicy, ReleasePolicyError, permits,
                                          verify_policy)
from node.keyshare.shamir import Share, ShamirError
from node.net.assertion import AssertionRefused, accept_assertion
from node.net.encoding import EncodingError, b64, unb64
from node.net.reqsign import RequestRefused
from node.net.rosterbook import RosterBook
from node.net.server import PeerRequest

HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
RESHARE = "reshare"


def hex_field(doc: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not pattern.match(value):
        raise RequestRefused(400, "bad_request", f"field {key!r} is missing or not lowercase hex")
    return value


class ShareHolder:
    def __init__(self, identity: NodeIdentity, roster: RosterBook,
                 custody: Callable[[], Custody], audit: Callable[[], AuditLog | None], *,
                 clock: Callable[[], float]) -> None:
        """``clock``: the node's time (``Transport.wall_clock``: the wall clock on a real
        node, virtual time in the simulator); assertion and release-policy lifetimes are
        checked against it."""
        self._identity = identity
        self._roster = roster
        self._custody = custody
        self._audit = audit
        self._clock = clock

    def _record(self, action: str, actor: str, outcome: str, bundle_id: str, **detail: Any) -> None:
        audit = self._audit()
        if audit is not None:
            audit.append(action, actor, outcome, bundle_id, **detail)

    def _refuse(self, action: str, call: PeerRequest, bundle_id: str, exc: RequestRefused) -> RequestRefused:
        self._record(action, call.sender.node_id, "refused", bundle_id, code=exc.code,
                     reason=exc.reason)
        return exc

    # -- deposit -------------------------------------------------------------
    async def deposit(self, call: PeerRequest) -> dict[str, Any]:
        doc = call.json
        bundle_id = hex_field(doc, "bundle_id", HEX64)
        split_id = hex_field(doc, "split_id", HEX32)
        try:
            policy = ReleasePolicy.from_dict(doc.get("policy"))
            if policy.owner != call.sender.node_id:
                raise ReleasePolicyError("only the owner of a bundle may deposit its shares")
            verify_policy(policy, call.sender.verify_key, bundle_id=bundle_id)
            sealed = unb64(doc.get("sealed"), "sealed share")
            share = Share.from_bytes(SealedBox(self._identity.box_key).decrypt(sealed))
            if share.split_id.hex() != split_id:
                raise ShamirError("share split id does not match the deposit")
        except (ReleasePolicyError, EncodingError, ShamirError, CryptoError) as exc:
            raise self._refuse("keyshare.deposit", call, bundle_id,
                               RequestRefused(400, "bad_deposit", f"deposit refused: {exc}"))
        held = HeldShare(bundle_id, call.sender.node_id, split_id, share.x, sealed,
                         json.dumps(policy.to_dict(), sort_keys=True))
        try:
            new = await self._custody().deposit(held)
        except CustodyConflict as exc:
            raise self._refuse("keyshare.deposit", call, bundle_id,
                               RequestRefused(409, "share_conflict", str(exc)))
        self._record("keyshare.deposit", call.sender.node_id, "ok", bundle_id,
                     split_id=split_id, new=new)
        return {"stored": True, "new": new}

    # -- release -------------------------------------------------------------
    async def release(self, call: PeerRequest) -> dict[str, Any]:
        doc = call.json
        bundle_id = hex_field(doc, "bundle_id", HEX64)
        owner = hex_field(doc, "owner", HEX64)
        held = await self._custody().current(bundle_id, owner)
        if held is None:
            raise self._refuse("keyshare.release", call, bundle_id, RequestRefused(
                404, "no_share", "this node holds no current key share of that bundle"))
        detail = self._authorize_release(call, doc, held, owner)
        try:
            plain = SealedBox(self._identity.box_key).decrypt(held.sealed)
        except CryptoError:
            raise self._refuse("keyshare.release", call, bundle_id, RequestRefused(
                500, "share_unreadable", "the held share cannot be opened with this node's key"))
        sealed = SealedBox(PublicKey(call.sender.box_key)).encrypt(plain)
        self._record("keyshare.release", call.sender.node_id, "ok", bundle_id,
                     split_id=held.split_id, **detail)
        return {"split_id": held.split_id, "x": held.x, "sealed": b64(sealed)}

    def _authorize_release(self, call: PeerRequest, doc: dict[str, Any], held: HeldShare,
                           owner: str) -> dict[str, Any]:
        """Raise (audited) unless the requester may have the share; audit detail otherwise."""
        sender = call.sender
        if doc.get("purpose") == RESHARE and sender.node_id == owner:
            return {"to_owner": True}
        owner_member = self._roster.member(owner)
        now = self._clock()
        try:
            policy = ReleasePolicy.from_dict(json.loads(held.policy))
            if owner_member is None:
                raise RequestRefused(403, "owner_not_member",
                                     "the bundle's owning site is no longer an active member")
            verify_policy(policy, owner_member.verify_key, bundle_id=held.bundle_id)
            assertion = accept_assertion(doc.get("assertion"), self._roster.current,
                                         sender.node_id, now=now)
        except AssertionRefused as exc:
            raise self._refuse("keyshare.release", call, held.bundle_id, exc)
        except ReleasePolicyError as exc:
            raise self._refuse("keyshare.release", call, held.bundle_id,
                               RequestRefused(403, "bad_policy", str(exc)))
        except RequestRefused as exc:
            raise self._refuse("keyshare.release", call, held.bundle_id, exc)
        permit = permits(policy, assertion, sender, now=now)
        if not permit:
            raise self._refuse("keyshare.release", call, held.bundle_id,
                               RequestRefused(403, "release_refused", permit.reason))
        return {"assertion_id": assertion.assertion_id, "role": assertion.role,
                "purpose": assertion.purpose}

    # -- revoke --------------------------------------------------------------
    async def revoke(self, call: PeerRequest) -> dict[str, Any]:
        doc = call.json
        bundle_id = hex_field(doc, "bundle_id", HEX64)
        split_ids = doc.get("split_ids")
        if not isinstance(split_ids, list) or not all(
                isinstance(s, str) and HEX32.match(s) for s in split_ids):
            raise RequestRefused(400, "bad_request", "split_ids must be a list of 32-hex split ids")
        count = await self._custody().revoke(bundle_id, call.sender.node_id, split_ids)
        self._record("keyshare.revoke", call.sender.node_id, "ok", bundle_id, revoked=count)
        return {"revoked": count}
