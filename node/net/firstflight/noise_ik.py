"""Noise ``IK`` set-up for a peer connection (noiseprotocol, X25519 + AES-GCM + SHA-256).

Pure: keys in, ``NoiseConnection`` out. Static keys are the members' X25519 box keys in the
signed roster, so the client pins exactly the key the roster lists for the member it
calls, and the server learns which member called from the key it proved it holds. The
prologue binds the protocol version, so a message from another protocol does not verify.
"""

from __future__ import annotations

from dataclasses import dataclass

from noise.connection import Keypair, NoiseConnection

from node.net.firstflight.frames import MAX_CHUNK, MAX_MESSAGE, TAG

PROTOCOL = b"Noise_IK_25519_AESGCM_SHA256"
PROLOGUE = b"medfed-peer-first-flight-v1"
# message 1 = e (32) + sealed s (32 + tag) + sealed payload (payload + tag)
MAX_FIRST_PAYLOAD = MAX_MESSAGE - 32 - (32 + TAG) - TAG


@dataclass(frozen=True)
class StaticKey:
    """This node's X25519 box key: the private half stays in the process."""

    private: bytes

    def __repr__(self) -> str:
        return "StaticKey(<secret>)"


def initiator(static: StaticKey, server_public: bytes) -> NoiseConnection:
    conn = NoiseConnection.from_name(PROTOCOL)
    conn.set_as_initiator()
    conn.set_prologue(PROLOGUE)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static.private)
    conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, server_public)
    conn.start_handshake()
    return conn


def responder(static: StaticKey) -> NoiseConnection:
    conn = NoiseConnection.from_name(PROTOCOL)
    conn.set_as_responder()
    conn.set_prologue(PROLOGUE)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static.private)
    conn.start_handshake()
    return conn


def remote_static(conn: NoiseConnection) -> bytes:
    """The caller's static public key, once message 1 was read (before message 2)."""
    return bytes(conn.noise_protocol.handshake_state.rs.public_bytes)


def seal(conn: NoiseConnection, data: bytes | bytearray | memoryview) -> list[bytes]:
    """``data`` as transport messages (each at most ``MAX_CHUNK`` bytes of plaintext)."""
    view = memoryview(data)
    return [conn.encrypt(bytes(view[i:i + MAX_CHUNK])) for i in range(0, len(view), MAX_CHUNK)]
