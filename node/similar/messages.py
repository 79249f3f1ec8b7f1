"""The computation request a home node signs and the answer a site returns (JSON, strict).

The request carries the query's feature vector — never pixels — plus the method id and
version, filters and how many matches to return. It is signed by the home node's key
under its own domain tag, besides the peer request signature, so the serving site can
keep it as evidence in its provenance record. The answer holds scores and pseudonymous
series refs only (plus de-identified diagnosis / report text where the serving site's
policy releases it). Pure: no I/O.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from node.identity import NodeIdentity, verify_signature
from node.net.encoding import EncodingError, signed_bytes, unhex

from .method import METHOD_ID, MAX_DIM, VERSION, MethodError, vector_from_wire, vector_to_wire

REQUEST_DOMAIN = b"medfed-similarity-request-v1"
MAX_TOP = 100
MAX_EXCLUDE = 16
REQUEST_LIFETIME_S = 300
_CODE = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class MessageError(ValueError):
    """A request or answer does not have the agreed shape (the message names the field)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class SimilarityRequest:
    request_id: str
    home: str                      # 64-hex node id of the asking site (the signer)
    method: str
    version: str
    vector: tuple[float, ...]
    modality: str | None = None
    body_part: str | None = None
    top: int = 10
    exclude: tuple[str, ...] = ()  # keyed series UIDs not to return (the query series)
    issued_at: int = 0
    signature: str = ""

    def claims(self) -> dict[str, Any]:
        doc = asdict(self)
        del doc["signature"]
        doc["vector"] = list(self.vector)
        doc["exclude"] = list(self.exclude)
        return doc

    def to_json(self) -> dict[str, Any]:
        return {**self.claims(), "signature": self.signature}

    def array(self, dim: int) -> np.ndarray:
        try:
            return vector_from_wire(list(self.vector), dim)
        except MethodError as exc:
            raise MessageError("bad_vector", str(exc)) from None

    @classmethod
    def from_json(cls, doc: object) -> "SimilarityRequest":
        if not isinstance(doc, Mapping):
            raise MessageError("bad_request", "the similarity request must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(str(k)[:32] for k in doc if k not in known)
        if unknown:
            raise MessageError("bad_request", f"unknown request field(s): {', '.join(unknown)}")
        vector = doc.get("vector")
        if not isinstance(vector, list) or not 1 <= len(vector) <= MAX_DIM:
            raise MessageError("bad_vector", f"vector must be a list of 1 to {MAX_DIM} numbers")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vector):
            raise MessageError("bad_vector", "vector must hold numbers only")
        if not all(math.isfinite(v) for v in vector):
            raise MessageError("bad_vector", "vector holds NaN or infinite values")
        exclude = doc.get("exclude", [])
        if not isinstance(exclude, list) or len(exclude) > MAX_EXCLUDE or not all(
                isinstance(x, str) and _UID.match(x) and len(x) <= 64 for x in exclude):
            raise MessageError("bad_request", f"exclude must be at most {MAX_EXCLUDE} series UIDs")
        texts = {}
        for key in ("request_id", "home", "method", "version", "signature"):
            value = doc.get(key)
            if not isinstance(value, str):
                raise MessageError("bad_request", f"request field {key!r} must be text")
            texts[key] = value
        optional = {}
        for key in ("modality", "body_part"):
            value = doc.get(key)
            if value is not None and (not isinstance(value, str) or not _CODE.match(value)):
                raise MessageError("bad_request", f"{key} must be a DICOM code string in capitals")
            optional[key] = value
        top, issued = doc.get("top", 10), doc.get("issued_at")
        for key, value in (("top", top), ("issued_at", issued)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise MessageError("bad_request", f"{key} must be a whole number")
        request = cls(vector=tuple(float(v) for v in vector), exclude=tuple(exclude), top=top,
                      issued_at=issued, **texts, **optional)
        request.check()
        return request

    def check(self) -> None:
        if not _HEX32.match(self.request_id):
            raise MessageError("bad_request", "request_id must be 32 hex characters")
        if not _HEX64.match(self.home):
            raise MessageError("bad_request", "home must be a 64-hex node id")
        if not METHOD_ID.match(self.method) or not VERSION.match(self.version):
            raise MessageError("unknown_method", "method id or version is not well formed")
        if not 1 <= self.top <= MAX_TOP:
            raise MessageError("bad_request", f"top must be from 1 to {MAX_TOP}")


def build_request(identity: NodeIdentity, *, method: str, version: str, vector: np.ndarray,
                  modality: str | None, body_part: str | None, top: int,
                  exclude: tuple[str, ...] = (), now: float | None = None) -> SimilarityRequest:
    """A request signed by this node (the home site)."""
    draft = SimilarityRequest(secrets.token_hex(16), identity.node_id_hex, method, version,
                              tuple(vector_to_wire(vector)), modality, body_part, top,
                              tuple(exclude), int(time.time() if now is None else now))
    draft.check()
    signature = identity.sign(signed_bytes(REQUEST_DOMAIN, draft.claims())).hex()
    return replace(draft, signature=signature)


def verify_request(request: SimilarityRequest, sender: str, verify_key: bytes, *,
                   now: float) -> None:
    """Raise MessageError unless the sender signed this request recently."""
    if request.home != sender:
        raise MessageError("request_wrong_site",
                           "the request was signed for another site than the one sending it")
    try:
        signature = unhex(request.signature, "request signature", 64)
    except EncodingError:
        raise MessageError("bad_signature", "the request signature is not 64 bytes of hex") from None
    if not verify_signature(verify_key, signed_bytes(REQUEST_DOMAIN, request.claims()), signature):
        raise MessageError("bad_signature",
                           "the request signature does not verify with the home site's key")
    if not -30 <= now - request.issued_at <= REQUEST_LIFETIME_S:
        raise MessageError("request_expired", "the request is too old or issued in the future "
                           "(check clocks / NTP)")


@dataclass(frozen=True)
class Match:
    """One series at the answering site, as much as that site releases."""

    ref: str                        # keyed series UID (pseudonymous)
    score: float
    bundle_id: str = ""             # set when the series is published (fetchable by id)
    patient: str = ""               # federation pseudonym
    modality: str = ""
    body_part: str = ""
    study_month: str = ""
    diagnosis: str = ""             # de-identified, only where policy releases it
    report: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v != "" or k in ("ref", "score")}


MATCH_TEXT_LIMIT = {"ref": 64, "bundle_id": 64, "patient": 32, "modality": 16, "body_part": 16,
                    "study_month": 7, "diagnosis": 200, "report": 2000}


def match_from_json(doc: object) -> Match:
    if not isinstance(doc, Mapping):
        raise MessageError("bad_answer", "a match must be an object")
    unknown = set(doc) - set(Match.__dataclass_fields__)
    if unknown:
        raise MessageError("bad_answer", "a match has unknown fields")
    score = doc.get("score")
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not np.isfinite(score):
        raise MessageError("bad_answer", "a match score must be a finite number")
    texts: dict[str, str] = {}
    for key, limit in MATCH_TEXT_LIMIT.items():
        value = doc.get(key, "")
        if not isinstance(value, str) or len(value) > limit:
            raise MessageError("bad_answer", f"match field {key!r} must be text of at most {limit}")
        texts[key] = value
    if not _UID.match(texts["ref"]):
        raise MessageError("bad_answer", "a match ref must be a keyed series UID")
    return Match(score=float(score), **texts)


@dataclass
class SiteResult:
    """A site's parsed answer (status ``ok``) — matches plus its signed provenance."""

    level: str
    scanned: int
    matches: list[Match] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
