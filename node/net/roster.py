"""The signed roster: who is a member of the federation right now, and who was thrown out.

The CA signs each roster version; every node checks the signature against the CA
certificate it pinned at join, and only a strictly newer version replaces the one it has.
A roster therefore cannot be forged by a member and cannot be rolled back to re-admit a
revoked node, whoever delivers it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from node.identity import NodeIdentity, node_id_for
from node.net.encoding import (EncodingError, b64, canonical, field, load_json_object,
                               signed_bytes, unb64, unhex)
from node.net.pki import fingerprint, sign_with_ca, verify_with_ca

ROSTER_DOMAIN = b"medfed-roster-v1"
MAX_ROSTER_BYTES = 4 << 20
_AE = re.compile(r"^[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]{0,15}$")
_HEX_ID = re.compile(r"^[0-9a-f]{64}$")

Status = Literal["member", "revoked", "unknown"]


class RosterError(Exception):
    """A roster is malformed, not signed by the federation CA, or from another federation."""


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) -> (host, port); raises ValueError with the reason."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"address {address!r} must look like host:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"address {address!r} has port outside 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() or c in "/?#@" for c in host):
        raise ValueError(f"address {address!r} has an invalid host")
    return host, port


@dataclass(frozen=True)
class Member:
    node_id: str          # 64 lowercase hex = sha256(verify_key)
    name: str
    verify_key: bytes     # Ed25519 public key
    box_key: bytes        # X25519 public key (sealing key shares and secrets to it)
    peer_address: str     # host:port of the mTLS peer API
    dht_address: str      # host:port of the DHT endpoint
    dicom_ae: str

    @property
    def node_id_bytes(self) -> bytes:
        return bytes.fromhex(self.node_id)

    @classmethod
    def for_identity(cls, identity: NodeIdentity, name: str, peer_address: str,
                     dht_address: str, dicom_ae: str) -> "Member":
        return cls(identity.node_id_hex, name, identity.verify_key, identity.box_public_key,
                   peer_address, dht_address, dicom_ae).validated()

    def validated(self) -> "Member":
        if not _HEX_ID.match(self.node_id) or node_id_for(self.verify_key).hex() != self.node_id:
            raise RosterError(f"member {self.name!r}: node id does not match its verify key")
        if len(self.box_key) != 32:
            raise RosterError(f"member {self.name!r}: box key must be 32 bytes")
        if not 0 < len(self.name) <= 128 or not self.name.isprintable():
            raise RosterError("member name must be 1-128 printable characters")
        for addr in (self.peer_address, self.dht_address):
            try:
                split_address(addr)
            except ValueError as exc:
                raise RosterError(f"member {self.name!r}: {exc}") from exc
        if not _AE.match(self.dicom_ae):
            raise RosterError(f"member {self.name!r}: DICOM AE title must be 1-16 characters")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "name": self.name, "verify_key": self.verify_key.hex(),
                "box_key": self.box_key.hex(), "peer_address": self.peer_address,
                "dht_address": self.dht_address, "dicom_ae": self.dicom_ae}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "Member":
        what = "roster member"
        return cls(field(doc, "node_id", str, what), field(doc, "name", str, what),
                   unhex(doc.get("verify_key"), "verify_key", 32),
                   unhex(doc.get("box_key"), "box_key", 32),
                   field(doc, "peer_address", str, what), field(doc, "dht_address", str, what),
                   field(doc, "dicom_ae", str, what)).validated()


@dataclass(frozen=True)
class Roster:
    federation: str
    federation_id: str    # SHA-256 fingerprint of the CA certificate
    version: int
    issued_at: int
    members: tuple[Member, ...] = ()
    revoked: tuple[str, ...] = ()

    def status(self, node_id: str) -> Status:
        if node_id in self.revoked:
            return "revoked"
        return "member" if self.member(node_id) is not None else "unknown"

    def member(self, node_id: str) -> Member | None:
        """The active (not revoked) member with this id."""
        return self._active_by_id.get(node_id)

    def member_at(self, peer_address: str) -> Member | None:
        return next((m for m in self.active() if m.peer_address == peer_address), None)

    def active(self) -> tuple[Member, ...]:
        return self._active

    # Every peer request and DHT datagram asks ``member``: an index, not a scan of N
    # members (the roster is immutable, so both are computed once, on first use).
    @cached_property
    def _active(self) -> tuple[Member, ...]:
        revoked = set(self.revoked)
        return tuple(m for m in self.members if m.node_id not in revoked)

    @cached_property
    def _active_by_id(self) -> dict[str, Member]:
        return {m.node_id: m for m in self._active}

    def with_member(self, member: Member, issued_at: int) -> "Roster":
        """Next version with ``member`` added or updated; a revoked id stays revoked."""
        if member.node_id in self.revoked:
            raise RosterError(f"node {member.node_id[:16]}… was revoked and cannot be "
                              "re-admitted; the node must create new keys and ask again")
        others = tuple(m for m in self.members if m.node_id != member.node_id)
        return replace(self, version=self.version + 1, issued_at=issued_at,
                       members=others + (member.validated(),))

    def with_revoked(self, node_id: str, issued_at: int) -> "Roster":
        if self.status(node_id) == "unknown":
            raise RosterError(f"node {node_id[:16]}… is not a member of {self.federation!r}")
        return replace(self, version=self.version + 1, issued_at=issued_at,
                       revoked=tuple(sorted(set(self.revoked) | {node_id})))

    @cached_property
    def signed_body(self) -> bytes:
        """What the CA's signature covers (encoded once per roster: O(members))."""
        return signed_bytes(ROSTER_DOMAIN, self.to_dict())

    @cached_property
    def signed_digest(self) -> bytes:
        return hashlib.sha256(self.signed_body).digest()

    def to_dict(self) -> dict[str, Any]:
        return {"federation": self.federation, "federation_id": self.federation_id,
                "version": self.version, "issued_at": self.issued_at,
                "members": [m.to_dict() for m in self.members], "revoked": list(self.revoked)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "Roster":
        what = "roster"
        members = field(doc, "members", list, what)
        revoked = field(doc, "revoked", list, what)
        if not all(isinstance(r, str) and _HEX_ID.match(r) for r in revoked):
            raise EncodingError("roster: revoked entries must be node ids")
        if not all(isinstance(m, dict) for m in members):
            raise EncodingError("roster: members must be objects")
        parsed = tuple(Member.from_dict(m) for m in members)
        if len({m.node_id for m in parsed}) != len(parsed):
            raise RosterError("roster lists the same node twice")
        version = field(doc, "version", int, what)
        if version < 1:
            raise EncodingError("roster: version must be >= 1")
        return cls(field(doc, "federation", str, what), field(doc, "federation_id", str, what),
                   version, field(doc, "issued_at", int, what), parsed, tuple(revoked))


@dataclass(frozen=True)
class SignedRoster:
    roster: Roster
    signature: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"roster": self.roster.to_dict(), "signature": b64(self.signature)}

    def to_json(self) -> bytes:
        return self._json

    # A roster is immutable and O(members) to encode: every holder of this object (a
    # simulator runs a thousand members in one process) shares one encoding.
    @cached_property
    def _json(self) -> bytes:
        return canonical(self.to_dict())


def first_roster(federation: str, ca_cert: x509.Certificate, issued_at: int) -> Roster:
    return Roster(federation, fingerprint(ca_cert), 1, issued_at)


def sign_roster(roster: Roster, ca_key: ec.EllipticCurvePrivateKey) -> SignedRoster:
    return SignedRoster(roster, sign_with_ca(ca_key, roster.signed_body))


# Rosters already verified in this process, by (CA, signature, digest of the signed bytes):
# the same CA-signed bytes parse to the same immutable Roster, so it is checked once and
# shared, not once per member that holds it (a simulator runs a thousand members in one
# process; a roster of N members costs O(N) to validate and to keep).
_VERIFIED: dict[tuple[str, bytes, bytes], "Roster"] = {}
_VERIFIED_MAX = 16


def _remember(key: tuple[str, bytes, bytes], roster: "Roster") -> None:
    if len(_VERIFIED) >= _VERIFIED_MAX:
        del _VERIFIED[next(iter(_VERIFIED))]
    _VERIFIED[key] = roster


def verify_roster(data: "bytes | Mapping[str, Any] | SignedRoster",
                  ca_cert: x509.Certificate) -> SignedRoster:
    """Parse and check a roster document; raises RosterError unless the CA signed it.
    A ``SignedRoster`` object (built in this process) is checked without re-encoding
    it once it has been checked: O(1), not O(members)."""
    if isinstance(data, SignedRoster):
        return _verify_object(data, ca_cert)
    try:
        if isinstance(data, (bytes, str)):
            if len(data) > MAX_ROSTER_BYTES:
                raise RosterError("roster document is too large")
            data = load_json_object(data, "roster document")
        body = data.get("roster")
        if not isinstance(body, dict):
            raise EncodingError("roster document has no 'roster' object")
        signature = unb64(data.get("signature"), "roster signature")
        covered = signed_bytes(ROSTER_DOMAIN, body)
        key = (fingerprint(ca_cert), signature, hashlib.sha256(covered).digest())
        roster = _VERIFIED.get(key)
        if roster is None:
            if not verify_with_ca(ca_cert, signature, covered):
                raise RosterError("roster is not signed by this federation's CA; refused")
            roster = Roster.from_dict(body)
            # the bytes the CA signed, exactly (a document may carry fields this
            # version does not model): what re-checking this object verifies
            roster.__dict__["signed_body"] = covered
            _remember(key, roster)
    except EncodingError as exc:
        raise RosterError(f"malformed roster: {exc}") from exc
    if roster.federation_id != fingerprint(ca_cert):
        raise RosterError("roster belongs to a different federation (CA fingerprint differs)")
    return SignedRoster(roster, signature)


def _verify_object(signed: SignedRoster, ca_cert: x509.Certificate) -> SignedRoster:
    roster = signed.roster
    key = (fingerprint(ca_cert), signed.signature, roster.signed_digest)
    known = _VERIFIED.get(key)
    if known is None:
        if not verify_with_ca(ca_cert, signed.signature, roster.signed_body):
            raise RosterError("roster is not signed by this federation's CA; refused")
        _remember(key, roster)
    elif known is not roster:
        signed = SignedRoster(known, signed.signature)   # share the one already held
    if signed.roster.federation_id != fingerprint(ca_cert):
        raise RosterError("roster belongs to a different federation (CA fingerprint differs)")
    return signed
