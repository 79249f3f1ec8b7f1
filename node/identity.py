"""Node identity: the keys that make a node a member and let others address it.

A node has an Ed25519 signing key (signs DHT records, peer requests, audit heads,
assertions) and an X25519 key (others seal key shares to it). Its node id is the
SHA-256 of the signing public key, so an id can be checked against the key that
claims it and nobody can choose where they land in the DHT's id space.
Keys live in ``<data_dir>/keys`` as raw bytes, readable by the owner only.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

from .datadir import make_private_dir

NODE_ID_BYTES = 32


class IdentityError(Exception):
    """The node's key files are missing, unreadable or inconsistent."""


def node_id_for(verify_key: bytes) -> bytes:
    """The node id that belongs to a signing public key."""
    return _node_id(bytes(verify_key))


# Every DHT datagram, contact and record derives its sender's id from a key several
# times (300 simulated nodes: 12 million derivations in a churn run, 2 % of its CPU),
# from the few thousand keys of a federation. Pure; bounded.
@functools.lru_cache(maxsize=1 << 14)
def _node_id(verify_key: bytes) -> bytes:
    return hashlib.sha256(verify_key).digest()


def verify_signature(verify_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``verify_key``'s Ed25519 signature of ``message``."""
    try:
        VerifyKey(verify_key).verify(message, signature)
        return True
    except (BadSignatureError, ValueError, TypeError):
        return False


@dataclass(frozen=True)
class NodeIdentity:
    signing_key: SigningKey
    box_key: PrivateKey

    @classmethod
    def generate(cls) -> "NodeIdentity":
        return cls(SigningKey.generate(), PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> "NodeIdentity":
        """Keys derived from ``seed`` (the simulator: same seed, same node ids, same
        DHT geometry). Never for a real node: anyone with the seed has the keys."""
        return cls(SigningKey(hashlib.sha256(b"sign:" + seed).digest()),
                   PrivateKey(hashlib.sha256(b"box:" + seed).digest()))

    @functools.cached_property
    def verify_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def box_public_key(self) -> bytes:
        return bytes(self.box_key.public_key)

    @functools.cached_property
    def node_id(self) -> bytes:
        return node_id_for(self.verify_key)

    @property
    def node_id_hex(self) -> str:
        return self.node_id.hex()

    def sign(self, message: bytes) -> bytes:
        """Detached Ed25519 signature (64 bytes)."""
        return self.signing_key.sign(message).signature

    def box_public(self) -> PublicKey:
        return self.box_key.public_key

    # -- persistence -------------------------------------------------------
    def save(self, key_dir: Path) -> None:
        make_private_dir(key_dir)  # and the data folder above it, if new: 0700 both
        os.chmod(key_dir, 0o700)
        for name, raw in (("signing.key", bytes(self.signing_key)),
                          ("box.key", bytes(self.box_key))):
            path = key_dir / name
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, raw)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        (key_dir / "node_id").write_text(self.node_id_hex + "\n")

    @classmethod
    def load(cls, key_dir: Path) -> "NodeIdentity":
        try:
            signing = (key_dir / "signing.key").read_bytes()
            box = (key_dir / "box.key").read_bytes()
        except OSError as exc:
            raise IdentityError(
                f"cannot read node keys in {key_dir}: {exc.strerror}. "
                "Run 'medfed init' to create them.") from exc
        if len(signing) != 32 or len(box) != 32:
            raise IdentityError(f"node key files in {key_dir} are corrupt (wrong length)")
        return cls(SigningKey(signing), PrivateKey(box))

    @classmethod
    def load_or_create(cls, key_dir: Path) -> "NodeIdentity":
        if (key_dir / "signing.key").exists():
            return cls.load(key_dir)
        ident = cls.generate()
        ident.save(key_dir)
        return ident
