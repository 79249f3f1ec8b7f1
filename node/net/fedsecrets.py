"""Federation secrets and how they reach members without the operator's mail server seeing them.

Three keys are shared by all members: the index key (keys DHT HMACs, so an outsider cannot
test "is patient X indexed?"), the patient-linkage key (keyed pseudonyms that link one
patient across sites) and the UID key (keyed UID remapping). They are sealed with a NaCl
SealedBox to one node's X25519 key, so only that node can open its copy, and they stay
sealed at rest on the node.
"""

from __future__ import annotations

import secrets as _random
from dataclasses import dataclass

from nacl.exceptions import CryptoError
from nacl.public import PublicKey, SealedBox

from node.identity import NodeIdentity
from node.net.encoding import EncodingError, canonical, field, load_json_object, unhex

KEY_BYTES = 32


class SecretsError(Exception):
    """Sealed federation secrets cannot be opened by this node or are corrupt."""


@dataclass(frozen=True)
class FederationSecrets:
    index_key: bytes
    linkage_key: bytes
    uid_key: bytes
    epoch: int = 1

    def __repr__(self) -> str:  # keep keys out of logs and tracebacks
        return f"FederationSecrets(epoch={self.epoch}, keys=<hidden>)"

    @classmethod
    def generate(cls, epoch: int = 1) -> "FederationSecrets":
        return cls(_random.token_bytes(KEY_BYTES), _random.token_bytes(KEY_BYTES),
                   _random.token_bytes(KEY_BYTES), epoch)

    def to_bytes(self) -> bytes:
        return canonical({"index_key": self.index_key.hex(), "linkage_key": self.linkage_key.hex(),
                          "uid_key": self.uid_key.hex(), "epoch": self.epoch})

    @classmethod
    def from_bytes(cls, data: bytes) -> "FederationSecrets":
        what = "federation secrets"
        doc = load_json_object(data, what)
        return cls(unhex(doc.get("index_key"), "index_key", KEY_BYTES),
                   unhex(doc.get("linkage_key"), "linkage_key", KEY_BYTES),
                   unhex(doc.get("uid_key"), "uid_key", KEY_BYTES),
                   field(doc, "epoch", int, what))


def seal_secrets(fed: FederationSecrets, box_public_key: bytes) -> bytes:
    return SealedBox(PublicKey(box_public_key)).encrypt(fed.to_bytes())


def open_secrets(sealed: bytes, identity: NodeIdentity) -> FederationSecrets:
    try:
        plain = SealedBox(identity.box_key).decrypt(sealed)
    except CryptoError as exc:
        raise SecretsError("the sealed federation secrets were not sealed to this node's key "
                           "(wrong node, or the bundle was damaged); ask the federation "
                           "operator for a new member bundle") from exc
    try:
        return FederationSecrets.from_bytes(plain)
    except EncodingError as exc:
        raise SecretsError(f"sealed federation secrets are malformed: {exc}") from exc
