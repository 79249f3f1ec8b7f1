"""A query answer as it travels: one JSON object, streamed, closed by a digest of itself.

A site writes its answer to ``POST /v1/query`` as rows come from its store, a batch at a
time, never holding the whole answer (up to 10,000 rows) in memory::

    {"level":"deidentified","counts":{...},"rows":[{...},{...}
    ],"truncated":false,"rows_sent":2,"sha256":"<64 hex>"}

The peer API's mutual TLS authenticates the site and protects the bytes in transit, as
for every other reply. What streaming adds is an answer that may end early (the site
failed after the first rows, the connection dropped, a transport delivered chunks out
of order): the last member is the SHA-256 of every byte before it, and ``rows_sent``
the number of rows, so the asking node accepts only an answer that arrived whole, in
order, exactly as written. Anything else is refused with ``AnswerError``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from .fanout import AnswerError

_DIGEST_KEY = b',"sha256":"'
_TRAILER = re.compile(rb',"sha256":"([0-9a-f]{64})"\}\Z')
_TRAILER_LEN = len(_DIGEST_KEY) + 64 + 2


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class AnswerWriter:
    """Encodes one answer piece by piece; every piece it returns is hashed."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.rows = 0

    def _out(self, text: str) -> bytes:
        data = text.encode()
        self._hash.update(data)
        return data

    def head(self, level: str, counts: Mapping[str, int | str]) -> bytes:
        return self._out(f'{{"level":{_dumps(level)},"counts":{_dumps(dict(counts))},"rows":[')

    def rows_chunk(self, rows: list[dict[str, Any]]) -> bytes:
        if not rows:
            return b""
        lead = "," if self.rows else ""
        self.rows += len(rows)
        return self._out(lead + ",".join(_dumps(r) for r in rows))

    def tail(self, truncated: bool) -> bytes:
        body = self._out(f'],"truncated":{_dumps(bool(truncated))},"rows_sent":{self.rows}')
        return body + _DIGEST_KEY + self._hash.hexdigest().encode() + b'"}'


def encode_answer(doc: Mapping[str, Any]) -> bytes:
    """A whole answer {level, counts, rows, truncated} in the streamed form (tests, and
    answers that are small anyway)."""
    writer = AnswerWriter()
    return (writer.head(doc["level"], doc.get("counts", {}))
            + writer.rows_chunk(list(doc.get("rows", [])))
            + writer.tail(doc.get("truncated", False)))


def read_answer(data: bytes) -> dict[str, Any]:
    """The answer object, only if ``data`` is a complete answer as its site wrote it."""
    trailer = _TRAILER.search(data[-_TRAILER_LEN:])
    if trailer is None:
        raise AnswerError("answer is incomplete (it does not end with its digest): the "
                          "site stopped or the connection dropped mid-answer")
    if hashlib.sha256(data[:-_TRAILER_LEN]).hexdigest().encode() != trailer.group(1):
        raise AnswerError("answer does not match its digest (altered or reordered on the way)")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise AnswerError(f"answer is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise AnswerError("answer is not an object with rows")
    if doc.get("rows_sent") != len(doc["rows"]):
        raise AnswerError(f"answer holds {len(doc['rows'])} rows but says it sent "
                          f"{str(doc.get('rows_sent'))[:12]}")
    return doc
