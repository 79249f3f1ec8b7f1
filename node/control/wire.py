"""Control requests as the node reads them: strict parsing, no I/O.

A malformed request is answered with a ``BadRequest`` naming the field and the fix; the
node never guesses what a half-understood request meant.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.control.actor import Actor
from node.net.assertion import PURPOSES
from node.query.model import FederatedQuery, QueryError
from node.sharing.retrieve import FetchError, SeriesRef, parse_series_ref
from node.sharing.sinks import FORMATS
from node.users.tokens import MAX_TTL_S

MAX_PASSWORD_CHARS = 4096

MAX_BODY_BYTES = 64 * 1024
MAX_DEADLINE_S = 3600.0
_TEXT = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")


class BadRequest(Exception):
    """A control request the node refuses; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


@dataclass(frozen=True)
class FetchRequest:
    ref: SeriesRef
    out: Path
    fmt: str
    identified: bool
    deadline_s: float
    actor: Actor


@dataclass(frozen=True)
class QueryRequest:
    query: FederatedQuery
    broadcast: bool
    deadline_s: float | None
    actor: Actor


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, "bad_json", f"the request body is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise BadRequest(400, "bad_json", "the request body must be a JSON object")
    return doc


def parse_actor(doc: Mapping[str, Any]) -> Actor:
    user = doc.get("user")
    if not isinstance(user, str) or not _TEXT.match(user):
        raise BadRequest(400, "bad_actor", "user must be 1-64 printable characters")
    token = doc.get("token")
    if not isinstance(token, str) or not 0 < len(token) <= 128:
        raise BadRequest(401, "no_token", "the request carries no user token; log in with "
                                          "'medfed user login NAME'")
    if doc.get("purpose") not in PURPOSES:
        raise BadRequest(400, "bad_actor", f"purpose must be one of {', '.join(PURPOSES)}")
    return Actor(user, token, doc["purpose"])


@dataclass(frozen=True)
class LoginRequest:
    user: str
    password: str = field(repr=False)
    ttl_s: float


def parse_login(doc: Mapping[str, Any]) -> LoginRequest:
    """A password login the node checks itself (so it audits a refusal in its own log)."""
    user = doc.get("user")
    if not isinstance(user, str) or not _TEXT.match(user):
        raise BadRequest(400, "bad_actor", "user must be 1-64 printable characters")
    password = doc.get("password")
    if not isinstance(password, str) or not 0 < len(password) <= MAX_PASSWORD_CHARS:
        raise BadRequest(400, "bad_password", "password must be a non-empty string")
    ttl = doc.get("ttl_s")
    if (not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not math.isfinite(ttl)
            or not 0 < ttl <= MAX_TTL_S):
        raise BadRequest(400, "bad_ttl", f"ttl_s must be seconds, more than 0 and at most "
                                         f"{MAX_TTL_S}")
    return LoginRequest(user, password, float(ttl))


def _deadline(doc: Mapping[str, Any], default: float | None) -> float | None:
    value = doc.get("deadline_s", default)
    if value is None:
        return None
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or not 0 < value <= MAX_DEADLINE_S):
        raise BadRequest(400, "bad_deadline", f"deadline_s must be seconds, more than 0 and at most "
                                              f"{MAX_DEADLINE_S:.0f}")
    return float(value)


def _flag(doc: Mapping[str, Any], name: str) -> bool:
    value = doc.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(400, f"bad_{name}", f"{name} must be true or false")
    return value


def parse_fetch(doc: Mapping[str, Any]) -> FetchRequest:
    actor = parse_actor(doc)
    ref = doc.get("ref")
    if not isinstance(ref, str) or len(ref) > 200:
        raise BadRequest(400, "bad_ref", "ref must be a series reference ([OWNER:]BUNDLE_ID or "
                                         "[OWNER:]SERIES_UID)")
    try:
        series = parse_series_ref(ref)
    except FetchError as exc:
        raise BadRequest(400, "bad_ref", str(exc)) from None
    out = doc.get("out")
    if not isinstance(out, str) or not out or "\x00" in out or not Path(out).is_absolute():
        raise BadRequest(400, "bad_out", "out must be an absolute folder path (the node writes "
                                         "the files on this machine)")
    fmt = doc.get("format", "dicom")
    if fmt not in FORMATS:
        raise BadRequest(400, "bad_format", f"format must be one of {', '.join(FORMATS)}")
    deadline = _deadline(doc, 300.0)
    assert deadline is not None
    return FetchRequest(series, Path(out), fmt, _flag(doc, "identified"), deadline, actor)


def parse_query(doc: Mapping[str, Any]) -> QueryRequest:
    actor = parse_actor(doc)
    try:
        query = FederatedQuery.from_json(doc.get("query", {}))
    except QueryError as exc:
        raise BadRequest(400, "bad_query", str(exc)) from None
    return QueryRequest(query, _flag(doc, "broadcast"), _deadline(doc, None), actor)
