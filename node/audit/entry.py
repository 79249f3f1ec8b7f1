"""One audit entry: canonical encoding, hashing, cleaning of fields, strict parsing.

Pure: no I/O. The hash covers the canonical encoding (sorted keys, no spaces, ASCII)
of the entry without ``hash``; ``prev`` links it to the entry before."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from .errors import AuditInputError, MalformedRecord


GENESIS = "0" * 64


MAX_TEXT = 200


MAX_DETAIL_FIELDS = 32


ENTRY_KEYS = frozenset({"seq", "ts", "action", "actor", "outcome", "subject", "detail",
                         "prev", "hash"})


Scalar = str | int | float | bool


def canonical(obj: Mapping[str, object]) -> bytes:
    """The one byte string that is hashed and signed: sorted keys, no spaces, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def ref(value: str, salt: bytes) -> str:
    """Short keyed-hash reference (16 hex chars) for a value that must not appear in clear.

    The salt is a site secret: without it a low-entropy value (a patient id) could be
    found again by hashing guesses.
    """
    if not isinstance(salt, bytes | bytearray) or len(salt) < 16:
        raise AuditInputError("ref() needs a secret salt of at least 16 bytes")
    if not isinstance(value, str):
        raise AuditInputError(f"ref() takes text, not {type(value).__name__}")
    data = value.encode("utf-8", "surrogatepass")
    return hmac.new(bytes(salt), data, hashlib.sha256).hexdigest()[:16]


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "\u2026"


def clean_text(name: str, value: object, *, required: bool) -> str:
    if not isinstance(value, str):
        raise AuditInputError(f"audit {name} must be text, not {type(value).__name__}")
    if required and not value:
        raise AuditInputError(f"audit {name} must not be empty")
    return _bounded(value)


def clean_detail(detail: Mapping[str, object]) -> dict[str, Scalar]:
    if len(detail) > MAX_DETAIL_FIELDS:
        raise AuditInputError(f"audit detail has {len(detail)} fields; at most "
                              f"{MAX_DETAIL_FIELDS} are allowed")
    clean: dict[str, Scalar] = {}
    for key, value in detail.items():
        if isinstance(value, str):
            clean[key] = _bounded(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise AuditInputError(f"audit detail {key!r} is {value}, not a finite number")
        elif isinstance(value, bool | int | float):
            clean[key] = value
        else:
            raise AuditInputError(f"audit detail {key!r} must be str, int, float or bool, "
                                  f"not {type(value).__name__}")
    return clean


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts: str
    action: str
    actor: str
    outcome: str
    subject: str
    detail: dict[str, Scalar]
    prev: str
    hash: str

    def body(self) -> dict[str, object]:
        """The entry without ``hash``: what the hash covers."""
        body = asdict(self)
        del body["hash"]
        return body

    def computed_hash(self) -> str:
        return hashlib.sha256(canonical(self.body())).hexdigest()


def build_entry(seq: int, ts: str, prev: str, action: str, actor: str, outcome: str,
                subject: str, detail: dict[str, Scalar]) -> tuple[AuditEntry, bytes]:
    """A hashed entry and its line, from already-cleaned fields (one JSON encoding)."""
    body = {"seq": seq, "ts": ts, "action": action, "actor": actor, "outcome": outcome,
            "subject": subject, "detail": detail, "prev": prev}
    encoded = canonical(body)
    digest = hashlib.sha256(encoded).hexdigest()
    line = encoded[:-1] + b',"hash":"' + digest.encode("ascii") + b'"}\n'
    return AuditEntry(hash=digest, **body), line  # type: ignore[arg-type]


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise MalformedRecord("a key appears twice")
    return obj


def load_object(raw: bytes, keys: frozenset[str]) -> dict[str, object]:
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedRecord(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise MalformedRecord("not a JSON object")
    if set(obj) != keys:
        raise MalformedRecord(f"fields are {sorted(obj)}, expected {sorted(keys)}")
    return obj


def is_hex64(value: object) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


def is_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def parse_entry(raw: bytes) -> AuditEntry:
    """An entry as stored (its ``hash`` is the stated one; compare with computed_hash)."""
    obj = load_object(raw, ENTRY_KEYS)
    if not is_seq(obj["seq"]):
        raise MalformedRecord("seq is not a positive integer")
    for name in ("ts", "action", "actor", "outcome", "subject"):
        if not isinstance(obj[name], str):
            raise MalformedRecord(f"{name} is not text")
    if not (is_hex64(obj["prev"]) and is_hex64(obj["hash"])):
        raise MalformedRecord("prev/hash are not 64 hex digits")
    detail = obj["detail"]
    if not isinstance(detail, dict) or not all(
            isinstance(v, str | int | float) for v in detail.values()):
        raise MalformedRecord("detail is not a flat object of scalars")
    try:
        return AuditEntry(**obj)  # type: ignore[arg-type]
    except TypeError as exc:  # pragma: no cover - keys were checked above
        raise MalformedRecord(str(exc)) from None
