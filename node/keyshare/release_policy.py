"""The owner's signed release policy for one bundle's key shares. Pure, no I/O.

Why signed by the owner: a share holder must decide alone, possibly while the owner is
offline, whether a requester may have its share. The owner states once, with its node
key, which sites, roles and purposes may receive the key and until when; every holder
checks that statement (and the user assertion) before it releases anything. A holder
cannot widen the policy, because the signature covers every field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from node.identity import NodeIdentity, verify_signature
from node.net.assertion import PURPOSES, ROLES
from node.net.encoding import EncodingError, field, signed_bytes, unhex
from node.policy import Asker, Site

POLICY_DOMAIN = b"medfed-release-policy-v1"
WILDCARD = "*"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SITE = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")


class ReleasePolicyError(ValueError):
    """A release policy is malformed, forged, or for another bundle or owner."""


@dataclass(frozen=True)
class ReleasePolicy:
    bundle_id: str                 # 64 hex
    owner: str                     # node id (hex) of the site that made the bundle
    sites: tuple[str, ...]         # node ids, member names, or "*"
    roles: tuple[str, ...]
    purposes: tuple[str, ...]
    issued_at: int
    expires_at: int
    signature: bytes = b""

    def claims(self) -> dict[str, Any]:
        doc = asdict(self)
        del doc["signature"]
        for key in ("sites", "roles", "purposes"):
            doc[key] = list(doc[key])
        return doc

    def to_dict(self) -> dict[str, Any]:
        return {**self.claims(), "signature": self.signature.hex()}

    @classmethod
    def from_dict(cls, doc: object) -> "ReleasePolicy":
        """Parse; raises ReleasePolicyError naming the bad field."""
        what = "release policy"
        try:
            if not isinstance(doc, Mapping):
                raise EncodingError("release policy must be an object")
            lists = {k: tuple(_str_list(doc, k)) for k in ("sites", "roles", "purposes")}
            policy = cls(field(doc, "bundle_id", str, what), field(doc, "owner", str, what),
                         issued_at=field(doc, "issued_at", int, what),
                         expires_at=field(doc, "expires_at", int, what),
                         signature=unhex(doc.get("signature"), "release policy signature", 64),
                         **lists)
        except EncodingError as exc:
            raise ReleasePolicyError(str(exc)) from exc
        policy.check_claims()
        return policy

    def check_claims(self) -> None:
        if not _HEX64.match(self.bundle_id) or not _HEX64.match(self.owner):
            raise ReleasePolicyError("release policy bundle_id and owner must be 64 hex characters")
        if not self.sites or not all(_SITE.match(s) for s in self.sites):
            raise ReleasePolicyError("release policy must name at least one site (or '*')")
        bad_roles = set(self.roles) - set(ROLES)
        bad_purposes = set(self.purposes) - set(PURPOSES)
        if not self.roles or bad_roles:
            raise ReleasePolicyError(f"release policy roles must be among {', '.join(ROLES)}")
        if not self.purposes or bad_purposes:
            raise ReleasePolicyError(f"release policy purposes must be among {', '.join(PURPOSES)}")
        if self.expires_at <= self.issued_at:
            raise ReleasePolicyError("release policy expires before it is issued")


def _str_list(doc: Mapping[str, Any], key: str) -> list[str]:
    value = doc.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EncodingError(f"release policy: field {key!r} must be a list of strings")
    return value


def make_policy(identity: NodeIdentity, bundle_id: str, *, sites: Iterable[str],
                roles: Iterable[str], purposes: Iterable[str], now: float,
                ttl_s: int) -> ReleasePolicy:
    """A policy for ``bundle_id`` signed by this (owner) node."""
    draft = ReleasePolicy(bundle_id, identity.node_id_hex, tuple(sites), tuple(roles),
                          tuple(purposes), int(now), int(now) + ttl_s)
    return sign_policy(identity, draft)


def sign_policy(identity: NodeIdentity, policy: ReleasePolicy) -> ReleasePolicy:
    if policy.owner != identity.node_id_hex:
        raise ReleasePolicyError("only the bundle's owner node may sign its release policy")
    policy.check_claims()
    return replace(policy, signature=identity.sign(signed_bytes(POLICY_DOMAIN, policy.claims())))


def verify_policy(policy: ReleasePolicy, owner_verify_key: bytes, *, bundle_id: str) -> None:
    """Raise ReleasePolicyError unless the owner signed exactly this policy for ``bundle_id``."""
    policy.check_claims()
    if policy.bundle_id != bundle_id:
        raise ReleasePolicyError("release policy is for another bundle")
    if not verify_signature(owner_verify_key, signed_bytes(POLICY_DOMAIN, policy.claims()),
                            policy.signature):
        raise ReleasePolicyError("release policy signature does not verify with the owner's key")


@dataclass(frozen=True)
class Permit:
    """The holder's answer; falsy when refused, with the reason to audit and return."""

    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


def permits(policy: ReleasePolicy, assertion: Asker, requesting_node: Site, *,
            now: float) -> Permit:
    """May ``requesting_node``'s user (already verified ``assertion``) receive the key?"""
    if now >= policy.expires_at:
        return Permit(False, "the owner's release policy for this bundle has expired")
    sites = set(policy.sites)
    if WILDCARD not in sites and not sites & {requesting_node.node_id, requesting_node.name}:
        return Permit(False, "the owner's release policy does not include the requesting site")
    if assertion.role not in policy.roles:
        return Permit(False, f"the owner's release policy does not allow role {assertion.role!r}")
    if assertion.purpose not in policy.purposes:
        return Permit(False, f"the owner's release policy does not allow purpose {assertion.purpose!r}")
    return Permit(True, "permitted by the owner's release policy")
