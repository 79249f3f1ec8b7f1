"""The signed head: the newest fsynced (seq, hash), signed so that cutting the log's end shows."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..identity import NodeIdentity, node_id_for, verify_signature
from .entry import canonical, is_hex64, is_seq, load_object
from .errors import MalformedRecord


MAX_HEAD_BYTES = 4096


HEAD_DOMAIN = b"medfed-audit-head-v1\n"


HEAD_KEYS = frozenset({"seq", "hash", "ts", "node_id", "signature"})


@dataclass(frozen=True)
class SignedHead:
    """The newest fsynced (seq, hash), signed so that cutting the log's end shows."""

    seq: int
    hash: str
    ts: str
    node_id: str
    signature: str

    def message(self) -> bytes:
        return HEAD_DOMAIN + canonical(
            {"seq": self.seq, "hash": self.hash, "ts": self.ts, "node_id": self.node_id})

    @classmethod
    def sign(cls, identity: NodeIdentity, seq: int, entry_hash: str, ts: str) -> SignedHead:
        unsigned = cls(seq, entry_hash, ts, identity.node_id_hex, "")
        return cls(seq, entry_hash, ts, identity.node_id_hex,
                   identity.sign(unsigned.message()).hex())

    def signature_valid(self, verify_key: bytes) -> bool:
        try:
            signature = bytes.fromhex(self.signature)
            if self.node_id != node_id_for(verify_key).hex():
                return False
        except (ValueError, TypeError):
            return False
        return verify_signature(verify_key, self.message(), signature)

    def to_bytes(self) -> bytes:
        return canonical(asdict(self)) + b"\n"

    @classmethod
    def parse(cls, raw: bytes) -> SignedHead:
        if len(raw) > MAX_HEAD_BYTES:
            raise MalformedRecord(f"{len(raw)} bytes, far more than a head")
        obj = load_object(raw, HEAD_KEYS)
        if not (is_seq(obj["seq"]) and is_hex64(obj["hash"])
                and all(isinstance(obj[k], str) for k in ("ts", "node_id", "signature"))):
            raise MalformedRecord("wrong field types")
        return cls(**obj)  # type: ignore[arg-type]


def head_problem(head: SignedHead, last_seq: int, hash_at_head: str | None) -> str | None:
    """What is wrong between a head and the log it signs, or None."""
    if head.seq > last_seq:
        return (f"head says seq {head.seq} but log ends at {last_seq} "
                "(entries removed from the end)")
    if hash_at_head is None:
        return f"head says seq {head.seq} but no entry in the log has that seq"
    if hash_at_head != head.hash:
        return (f"head says seq {head.seq} has hash {head.hash[:12]}… but the log has "
                f"{hash_at_head[:12]}… (log rewritten after the head was signed?)")
    return None


def head_path_for(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def read_head(path: Path) -> SignedHead | None:
    try:
        raw = head_path_for(path).read_bytes()
    except FileNotFoundError:
        return None
    return SignedHead.parse(raw)
