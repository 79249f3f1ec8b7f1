"""Pairwise datagram keys: one X25519 agreement per peer, then a keyed MAC per datagram.

Why: every addressed DHT datagram was Ed25519-signed by its sender (~21 µs) and checked
by its recipient (~56 µs); a 1,000-node simulated hour carries millions of them, and
that was a sixth of the simulator's CPU. An addressed datagram only has to convince its
recipient, so it can carry a MAC under a key only the two ends can compute instead: a
keyed BLAKE2b tag costs ~1.5 µs, and the agreement (~50 µs) is paid once per peer.

The key of members A and B is ``BLAKE2b(key=X25519(a, B), ids sorted)``, where each
side's X25519 key pair is the birational image of its Ed25519 identity key (libsodium's
``crypto_sign_ed25519_{sk,pk}_to_curve25519``), so the roster's verify keys are all a node
needs: no new key to distribute, and an id still proves the key behind it. What a MAC
gives up against a signature is third-party verifiability: a tag proves "A or B made
this" to B alone. Nothing relies on more: nobody forwards datagrams as evidence, index
records inside them are signed by their publishers and checked on their own, B drops
datagrams not addressed to it and the header names the sender, so B's own datagrams
cannot be reflected back to it as A's. A PING to ``ANYONE`` (the recipient's key is not
known yet) stays signed (``node.dht.wire``).
"""

from __future__ import annotations

import functools
import hashlib

from nacl import bindings
from nacl.exceptions import CryptoError

from node.identity import NodeIdentity, node_id_for

MAC_BYTES = 32
_PERSON = b"medfed-dht-mac1"   # BLAKE2b personalisation: these keys are for nothing else
MAX_PEERS = 1 << 13            # agreed keys kept per node (oldest forgotten first)


class PairKeyError(ValueError):
    """A peer's key cannot be used for an agreement (not a valid Ed25519 point)."""


@functools.lru_cache(maxsize=1 << 14)
def _curve_public(verify_key: bytes) -> bytes:
    """A member's Ed25519 verify key as an X25519 public key (pure, ~80 µs: cached)."""
    try:
        return bindings.crypto_sign_ed25519_pk_to_curve25519(verify_key)
    except (CryptoError, ValueError, TypeError) as exc:
        raise PairKeyError("peer verify key is not a valid Ed25519 public key") from exc


def mac(key: bytes, data: bytes) -> bytes:
    """The datagram tag: keyed BLAKE2b-256 of everything before it."""
    return hashlib.blake2b(data, key=key, digest_size=MAC_BYTES).digest()


class PairKeys:
    """This node's pairwise keys, made on first use with each peer and then kept."""

    def __init__(self, identity: NodeIdentity, max_peers: int = MAX_PEERS) -> None:
        _pk, secret = bindings.crypto_sign_seed_keypair(bytes(identity.signing_key))
        self._secret = bindings.crypto_sign_ed25519_sk_to_curve25519(secret)
        self.own_id = identity.node_id
        self._max = max_peers
        self._keys: dict[bytes, bytes] = {}   # peer verify key -> MAC key (insertion order)

    def key_for(self, peer_verify_key: bytes) -> bytes:
        """The MAC key this node shares with the holder of ``peer_verify_key``."""
        key = self._keys.get(peer_verify_key)
        if key is None:
            try:
                shared = bindings.crypto_scalarmult(self._secret, _curve_public(peer_verify_key))
            except (CryptoError, ValueError, TypeError) as exc:   # a low-order point
                raise PairKeyError("no key agreement with this peer key") from exc
            low, high = sorted((self.own_id, node_id_for(peer_verify_key)))
            key = hashlib.blake2b(low + high, key=shared, digest_size=MAC_BYTES,
                                  person=_PERSON).digest()
            if len(self._keys) >= self._max:
                del self._keys[next(iter(self._keys))]
            self._keys[peer_verify_key] = key
        return key
