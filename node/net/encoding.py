"""Canonical bytes for everything that is signed, so signer and verifier hash the same thing.

Signed documents (rosters, assertions, admission requests, peer requests) travel as JSON.
Whitespace and key order must not change a signature, so both sides sign the canonical
form: sorted keys, no whitespace, ASCII only. Each kind of document gets its own domain
prefix so that a signature over one kind can never be replayed as another.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any


class EncodingError(ValueError):
    """A field in a federation document has the wrong type or format."""


def canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def signed_bytes(domain: bytes, doc: Mapping[str, Any]) -> bytes:
    """What a signature covers: a domain tag, a newline, the canonical document."""
    return domain + b"\n" + canonical(doc)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise EncodingError(f"{what} must be base64 text")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise EncodingError(f"{what} is not valid base64") from exc


def unhex(text: object, what: str, length: int | None = None) -> bytes:
    if not isinstance(text, str):
        raise EncodingError(f"{what} must be hex text")
    try:
        raw = bytes.fromhex(text)
    except ValueError as exc:
        raise EncodingError(f"{what} is not valid hex") from exc
    if length is not None and len(raw) != length:
        raise EncodingError(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


def field(doc: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    """A required field of an exact type (bool is not accepted where int is wanted)."""
    value = doc.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise EncodingError(f"{what}: field {key!r} is missing or not {kind.__name__}")
    return value


def load_json_object(data: bytes | str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EncodingError(f"{what} is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise EncodingError(f"{what} must be a JSON object")
    return doc
