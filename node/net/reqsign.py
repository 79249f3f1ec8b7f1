"""Signed peer requests: who sent this, to whom, over which exact body, valid until when.

mTLS proves which member holds the connection; the signature additionally binds each
request to its sender key, its recipient, its body hash and a short validity window, and
the nonce lets the recipient refuse a replay. Pure: the clock is a parameter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets as _random
from collections.abc import Mapping
from dataclasses import dataclass

from node.identity import NodeIdentity, verify_signature

REQUEST_DOMAIN = b"medfed-peer-request-v1"
H_FROM = "X-Medfed-From"
H_TO = "X-Medfed-To"
H_TIMESTAMP = "X-Medfed-Timestamp"
H_EXPIRES = "X-Medfed-Expires"
H_NONCE = "X-Medfed-Nonce"
H_BODY = "X-Medfed-Body-Sha256"
H_SIGNATURE = "X-Medfed-Signature"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NONCE = re.compile(r"^[0-9a-f]{32}$")
_INT = re.compile(r"^[0-9]{1,12}$")


class RequestRefused(Exception):
    """A peer request fails a check; ``status`` and ``code`` go back to the sender."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class SignedHeaders:
    sender: str
    recipient: str
    timestamp: int
    expires: int
    nonce: str
    body_sha256: str
    signature: bytes

    def to_headers(self) -> dict[str, str]:
        return {H_FROM: self.sender, H_TO: self.recipient, H_TIMESTAMP: str(self.timestamp),
                H_EXPIRES: str(self.expires), H_NONCE: self.nonce, H_BODY: self.body_sha256,
                H_SIGNATURE: base64.b64encode(self.signature).decode("ascii")}


def _message(method: str, path: str, h: SignedHeaders) -> bytes:
    lines = (method.upper(), path, h.sender, h.recipient, str(h.timestamp), str(h.expires),
             h.nonce, h.body_sha256)
    return REQUEST_DOMAIN + b"\n" + "\n".join(lines).encode("utf-8")


def sign_request(identity: NodeIdentity, recipient: str, method: str, path: str, body: bytes,
                 *, now: float, lifetime_s: int) -> SignedHeaders:
    draft = SignedHeaders(identity.node_id_hex, recipient, int(now), int(now) + lifetime_s,
                          _random.token_hex(16), hashlib.sha256(body).hexdigest(), b"")
    sig = identity.sign(_message(method, path, draft))
    return SignedHeaders(**{**draft.__dict__, "signature": sig})


def parse_headers(headers: Mapping[str, str]) -> SignedHeaders:
    """Read the signature headers; raises RequestRefused(401, 'missing_signature'|…)."""
    values = {h: headers.get(h) for h in (H_FROM, H_TO, H_TIMESTAMP, H_EXPIRES, H_NONCE, H_BODY,
                                          H_SIGNATURE)}
    missing = [h for h, v in values.items() if not v]
    if missing:
        raise RequestRefused(401, "missing_signature",
                             f"request is not signed (missing {', '.join(missing)})")
    ok = (_HEX64.match(values[H_FROM] or "") and _HEX64.match(values[H_TO] or "")
          and _HEX64.match(values[H_BODY] or "") and _NONCE.match(values[H_NONCE] or "")
          and _INT.match(values[H_TIMESTAMP] or "") and _INT.match(values[H_EXPIRES] or ""))
    try:
        sig = base64.b64decode(values[H_SIGNATURE] or "", validate=True)
    except (binascii.Error, ValueError):
        sig = b""
    if not ok or len(sig) != 64:
        raise RequestRefused(401, "malformed_signature", "request signature headers are malformed")
    return SignedHeaders(str(values[H_FROM]), str(values[H_TO]), int(str(values[H_TIMESTAMP])),
                         int(str(values[H_EXPIRES])), str(values[H_NONCE]), str(values[H_BODY]),
                         sig)


def check_window(h: SignedHeaders, *, now: float, max_lifetime_s: int, skew_s: int) -> None:
    """Refuse expired, future-dated or too long-lived requests (before reading the body)."""
    if h.expires <= h.timestamp or h.expires - h.timestamp > max_lifetime_s:
        raise RequestRefused(401, "bad_lifetime",
                             f"request lifetime must be 1-{max_lifetime_s} seconds")
    if now > h.expires + skew_s:
        raise RequestRefused(401, "expired", "request has expired (check clocks / NTP)")
    if now < h.timestamp - skew_s:
        raise RequestRefused(401, "not_yet_valid", "request is dated in the future (check NTP)")


def check_signature(h: SignedHeaders, verify_key: bytes, method: str, path: str,
                    body: bytes) -> None:
    if hashlib.sha256(body).hexdigest() != h.body_sha256:
        raise RequestRefused(401, "body_mismatch", "request body does not match its signed hash")
    if not verify_signature(verify_key, _message(method, path, h), h.signature):
        raise RequestRefused(401, "bad_signature",
                             "request signature does not verify with the sender's key")
