"""Joining documents: the request a node sends to the operator and the bundle it gets back.

The admission request is signed with the node's Ed25519 key and carries its TLS
certificate signing request, so the operator learns in one document that whoever holds
this node id also holds this TLS key. The member bundle holds everything the node needs
to take part: its certificate, the CA certificate, the signed roster that lists it, and
the federation secrets sealed to its box key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from node.identity import NodeIdentity, node_id_for, verify_signature
from node.net.encoding import (EncodingError, b64, canonical, field, load_json_object,
                               signed_bytes, unb64, unhex)
from node.net.pki import PKIError, csr_from_pem
from node.net.roster import Member, RosterError, SignedRoster

REQUEST_KIND = "medfed-admission-request-v1"
BUNDLE_KIND = "medfed-member-bundle-v1"
MAX_DOC_BYTES = 8 << 20


class AdmissionError(Exception):
    """An admission request or member bundle is malformed, forged or not for this node."""


def _load_doc(data: bytes, kind: str, what: str) -> dict[str, Any]:
    if len(data) > MAX_DOC_BYTES:
        raise EncodingError("document too large")
    doc = load_json_object(data, what)
    if doc.get("kind") != kind:
        raise EncodingError(f"not a {kind} document")
    return doc


@dataclass(frozen=True)
class AdmissionRequest:
    name: str
    verify_key: bytes
    box_key: bytes
    peer_address: str
    dht_address: str
    dicom_ae: str
    csr_pem: str
    created_at: int
    signature: bytes = b""

    @property
    def node_id(self) -> str:
        return node_id_for(self.verify_key).hex()

    def claims(self) -> dict[str, Any]:
        doc = asdict(self)
        del doc["signature"]
        doc["verify_key"], doc["box_key"] = self.verify_key.hex(), self.box_key.hex()
        return {"kind": REQUEST_KIND, **doc}

    def signed_by(self, identity: NodeIdentity) -> "AdmissionRequest":
        if identity.verify_key != self.verify_key:
            raise AdmissionError("admission request must be signed by the node it describes")
        sig = identity.sign(signed_bytes(REQUEST_KIND.encode(), self.claims()))
        return AdmissionRequest(**{**asdict(self), "signature": sig})

    def to_json(self) -> bytes:
        return canonical({**self.claims(), "signature": self.signature.hex()})

    def member(self, name: str | None = None) -> Member:
        try:
            return Member(self.node_id, name or self.name, self.verify_key, self.box_key,
                          self.peer_address, self.dht_address, self.dicom_ae).validated()
        except RosterError as exc:
            raise AdmissionError(f"admission request: {exc}") from exc

    @classmethod
    def from_json(cls, data: bytes) -> "AdmissionRequest":
        """Parse and check the node's signature and CSR; raises AdmissionError."""
        what = "admission request"
        try:
            doc = _load_doc(data, REQUEST_KIND, what)
            req = cls(field(doc, "name", str, what), unhex(doc.get("verify_key"), "verify_key", 32),
                      unhex(doc.get("box_key"), "box_key", 32),
                      field(doc, "peer_address", str, what), field(doc, "dht_address", str, what),
                      field(doc, "dicom_ae", str, what), field(doc, "csr_pem", str, what),
                      field(doc, "created_at", int, what),
                      unhex(doc.get("signature"), "signature", 64))
        except EncodingError as exc:
            raise AdmissionError(f"malformed admission request: {exc}") from exc
        if not verify_signature(req.verify_key, signed_bytes(REQUEST_KIND.encode(), req.claims()),
                                req.signature):
            raise AdmissionError("admission request signature does not match its node key")
        try:
            csr_from_pem(req.csr_pem.encode("ascii"))
        except (PKIError, UnicodeEncodeError) as exc:
            raise AdmissionError(f"admission request: {exc}") from exc
        req.member()
        return req


@dataclass(frozen=True)
class MemberBundle:
    federation: str
    node_id: str
    node_cert_pem: str
    ca_cert_pem: str
    # the signed roster: a document (as read from a bundle file), or the operator's
    # object itself when the bundle does not leave the process (one shared roster for
    # every bundle of ``admit_many``, not a copy of O(members) each)
    roster: dict[str, Any] | SignedRoster
    sealed_secrets: bytes

    def to_json(self) -> bytes:
        roster = self.roster.to_dict() if isinstance(self.roster, SignedRoster) else self.roster
        return canonical({"kind": BUNDLE_KIND, "federation": self.federation,
                          "node_id": self.node_id, "node_cert_pem": self.node_cert_pem,
                          "ca_cert_pem": self.ca_cert_pem, "roster": roster,
                          "sealed_secrets": b64(self.sealed_secrets)})

    @classmethod
    def from_json(cls, data: bytes) -> "MemberBundle":
        what = "member bundle"
        try:
            doc = _load_doc(data, BUNDLE_KIND, what)
            return cls(field(doc, "federation", str, what), field(doc, "node_id", str, what),
                       field(doc, "node_cert_pem", str, what), field(doc, "ca_cert_pem", str, what),
                       field(doc, "roster", dict, what),
                       unb64(doc.get("sealed_secrets"), "sealed_secrets"))
        except EncodingError as exc:
            raise AdmissionError(f"malformed member bundle: {exc}") from exc
