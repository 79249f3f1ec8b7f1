"""Signed provenance records: which method, on which inputs, at which site, when, how.

Every computed result carries one (DM2 traceability): a site signs what it computed
for a request (``similarity.compute``), the home node signs how it merged and ranked
the sites' answers (``similarity.rank``) and what the clinician concluded from which
matches (``diagnosis.record``). A record names its inputs by pseudonymous refs, bundle
ids and digests — never PHI — and links the records it used by id and digest, so the
whole derivation can be checked from the last record back. The signature covers the
canonical JSON under its own domain tag (``node.net.encoding``); each record's digest is
also appended to the signer's hash-chained audit log. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from node.identity import NodeIdentity, verify_signature
from node.net.encoding import EncodingError, canonical, signed_bytes, unhex

PROVENANCE_DOMAIN = b"medfed-provenance-v1"
KINDS = ("similarity.compute", "similarity.rank", "diagnosis.record")
MAX_RECORD_BYTES = 256 << 10
_HEX = re.compile(r"^[0-9a-f]+$")


class ProvenanceError(ValueError):
    """A provenance record is malformed, unsigned, forged or altered."""


@dataclass(frozen=True)
class ProvenanceRecord:
    record_id: str                   # 32 hex, random
    kind: str                        # one of KINDS
    site: str                        # 64-hex node id of the signer (who computed)
    site_name: str
    time: str                        # ISO 8601 UTC
    user: str                        # pseudonymous user handle the work was done for
    method: dict[str, Any]           # {"id", "version", "params"}
    inputs: list[dict[str, Any]]     # entities used: refs, bundle ids, digests
    outputs: list[dict[str, Any]]    # entities generated: ranked refs + scores, ...
    links: list[dict[str, str]] = field(default_factory=list)   # [{"record_id", "digest"}]
    signature: str = ""

    def claims(self) -> dict[str, Any]:
        doc = asdict(self)
        del doc["signature"]
        return doc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def digest(self) -> str:
        """Names the signed content (what audit entries and links refer to)."""
        return hashlib.sha256(signed_bytes(PROVENANCE_DOMAIN, self.claims())).hexdigest()

    @classmethod
    def from_dict(cls, doc: object) -> "ProvenanceRecord":
        if not isinstance(doc, Mapping):
            raise ProvenanceError("provenance record must be an object")
        try:
            size = len(canonical(doc))
        except (TypeError, ValueError) as exc:
            raise ProvenanceError(f"provenance record is not plain JSON ({exc})") from None
        if size > MAX_RECORD_BYTES:
            raise ProvenanceError(f"provenance record is larger than {MAX_RECORD_BYTES} bytes")
        expected = set(cls.__dataclass_fields__)
        if set(doc) != expected:
            raise ProvenanceError("provenance record fields differ from "
                                  f"{', '.join(sorted(expected))}")
        texts = ("record_id", "kind", "site", "site_name", "time", "user", "signature")
        if not all(isinstance(doc[k], str) for k in texts):
            raise ProvenanceError("provenance record text fields must be text")
        if not isinstance(doc["method"], dict) or not all(
                isinstance(doc[k], list) and all(isinstance(x, dict) for x in doc[k])
                for k in ("inputs", "outputs", "links")):
            raise ProvenanceError("provenance record method/inputs/outputs/links have the wrong shape")
        record = cls(**{k: doc[k] for k in expected})
        if record.kind not in KINDS:
            raise ProvenanceError(f"provenance kind {record.kind[:32]!r} is not one of {', '.join(KINDS)}")
        if not (len(record.record_id) == 32 and _HEX.match(record.record_id)):
            raise ProvenanceError("provenance record_id must be 32 hex characters")
        if not (len(record.site) == 64 and _HEX.match(record.site)):
            raise ProvenanceError("provenance site must be a 64-hex node id")
        return record


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_record_id() -> str:
    return secrets.token_hex(16)


def sign_record(identity: NodeIdentity, draft: ProvenanceRecord) -> ProvenanceRecord:
    """``draft`` with ``site`` set to the signer and its signature filled in."""
    unsigned = ProvenanceRecord(**{**draft.claims(), "site": identity.node_id_hex})
    signature = identity.sign(signed_bytes(PROVENANCE_DOMAIN, unsigned.claims())).hex()
    return ProvenanceRecord(**{**unsigned.claims(), "signature": signature})


KeyLookup = Callable[[str], bytes | None]   # node id -> Ed25519 verify key (roster)


def verify_record(record: ProvenanceRecord, key_for: KeyLookup) -> None:
    """Raise ProvenanceError unless the signer is known and the signature covers the content."""
    key = key_for(record.site)
    if key is None:
        raise ProvenanceError(f"record {record.record_id}: signer {record.site[:16]}… is not a "
                              "known federation member")
    try:
        signature = unhex(record.signature, "provenance signature", 64)
    except EncodingError as exc:
        raise ProvenanceError(f"record {record.record_id}: {exc}") from None
    if not verify_signature(key, signed_bytes(PROVENANCE_DOMAIN, record.claims()), signature):
        raise ProvenanceError(f"record {record.record_id}: signature does not verify "
                              "(the record was altered after signing, or forged)")


def entity_digest(doc: Any) -> str:
    """SHA-256 of the canonical JSON of ``doc`` (names a request, a list, a text)."""
    return hashlib.sha256(canonical({"v": doc})).hexdigest()
