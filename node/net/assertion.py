"""Signed user assertions: how a user's identity and purpose travel with a federated request.

The home node has authenticated its user; other sites cannot, so the home node vouches
for the user with a short-lived statement signed by its node key (the role a SAML
assertion plays in MEDICUS). A serving site believes only what the statement says,
only if a roster member signed it, only while it is fresh, and only when it arrives from
the node that signed it. What to release is then the serving site's own policy.
"""

from __future__ import annotations

import re
import secrets as _random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from node.identity import NodeIdentity, verify_signature
from node.net.encoding import EncodingError, field, signed_bytes, unhex
from node.net.reqsign import RequestRefused
from node.net.roster import Roster

ROLES = ("clinician", "researcher", "admin")
PURPOSES = ("treatment", "research", "operations")
ASSERTION_DOMAIN = b"medfed-user-assertion-v1"
DEFAULT_TTL_S = 300
MAX_TTL_S = 3600
CLOCK_SKEW_S = 30
_TEXT = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")


class AssertionRefused(RequestRefused):
    """A user assertion is malformed, forged, expired or presented by the wrong node.

    A peer handler may let it propagate: the peer server answers 403 and audits it.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(403, code, reason)


@dataclass(frozen=True)
class UserAssertion:
    assertion_id: str     # 32 hex, random
    user: str             # pseudonymous handle at the home node
    role: str
    department: str
    home_node: str        # hex node id of the signing home site
    purpose: str
    issued_at: int
    expires_at: int
    signature: bytes = b""

    def claims(self) -> dict[str, Any]:
        doc = asdict(self)
        del doc["signature"]
        return doc

    def to_dict(self) -> dict[str, Any]:
        return {**self.claims(), "signature": self.signature.hex()}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "UserAssertion":
        """Parse; raises AssertionRefused('malformed_assertion', …) on any bad field."""
        what = "user assertion"
        try:
            if not isinstance(doc, Mapping):
                raise EncodingError("user assertion must be an object")
            text = {k: field(doc, k, str, what) for k in ("assertion_id", "user", "role",
                                                          "department", "home_node", "purpose")}
            made = cls(**text, issued_at=field(doc, "issued_at", int, what),
                       expires_at=field(doc, "expires_at", int, what),
                       signature=unhex(doc.get("signature"), "assertion signature", 64))
            made.check_claims()
        except EncodingError as exc:
            raise AssertionRefused("malformed_assertion", str(exc)) from exc
        return made

    def check_claims(self) -> None:
        if self.role not in ROLES:
            raise EncodingError(f"role must be one of {', '.join(ROLES)}")
        if self.purpose not in PURPOSES:
            raise EncodingError(f"purpose must be one of {', '.join(PURPOSES)}")
        for name in ("user", "department"):
            if not _TEXT.match(getattr(self, name)):
                raise EncodingError(f"{name} must be 1-64 printable characters")
        if not re.fullmatch(r"[0-9a-f]{32}", self.assertion_id):
            raise EncodingError("assertion_id must be 32 hex characters")
        if not re.fullmatch(r"[0-9a-f]{64}", self.home_node):
            raise EncodingError("home_node must be a 64-hex node id")
        if not 0 < self.expires_at - self.issued_at <= MAX_TTL_S:
            raise EncodingError(f"assertion lifetime must be 1-{MAX_TTL_S} seconds")


def issue_assertion(identity: NodeIdentity, *, user: str, role: str, department: str,
                    purpose: str, now: float, ttl_s: int = DEFAULT_TTL_S) -> UserAssertion:
    """Sign a statement about a user this node has authenticated."""
    issued = int(now)
    draft = UserAssertion(_random.token_hex(16), user, role, department, identity.node_id_hex,
                          purpose, issued, issued + ttl_s)
    try:
        draft.check_claims()
    except EncodingError as exc:
        raise ValueError(f"cannot issue assertion: {exc}") from exc
    return UserAssertion(**{**asdict(draft),
                            "signature": identity.sign(signed_bytes(ASSERTION_DOMAIN,
                                                                    draft.claims()))})


def verify_assertion(assertion: UserAssertion, roster: Roster, requesting_node: str, *,
                     now: float, skew_s: int = CLOCK_SKEW_S) -> None:
    """Raise AssertionRefused unless the assertion is genuine, fresh and presented by its signer."""
    if assertion.home_node != requesting_node:
        raise AssertionRefused("assertion_wrong_site",
                               "assertion was signed by another site than the one presenting it")
    home = roster.member(assertion.home_node)
    if home is None:
        raise AssertionRefused("assertion_not_member",
                               "assertion's home site is not an active federation member")
    if not verify_signature(home.verify_key, signed_bytes(ASSERTION_DOMAIN, assertion.claims()),
                            assertion.signature):
        raise AssertionRefused("assertion_bad_signature",
                               "assertion signature does not verify with the home site's key")
    if now > assertion.expires_at + skew_s:
        raise AssertionRefused("assertion_expired", "user assertion has expired")
    if now < assertion.issued_at - skew_s:
        raise AssertionRefused("assertion_not_yet_valid",
                               "user assertion is issued in the future (check clocks / NTP)")


def accept_assertion(doc: object, roster: Roster, requesting_node: str, *, now: float,
                     skew_s: int = CLOCK_SKEW_S) -> UserAssertion:
    """Parse and verify an assertion carried in a peer request (what a handler calls)."""
    if not isinstance(doc, Mapping):
        raise AssertionRefused("missing_assertion", "request carries no user assertion")
    assertion = UserAssertion.from_dict(doc)
    verify_assertion(assertion, roster, requesting_node, now=now, skew_s=skew_s)
    return assertion
