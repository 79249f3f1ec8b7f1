"""Reading a peer request's JSON body: strict, bounded in depth, valid Unicode only.

Python's parser recurses, so a body of ten thousand opening brackets raises
RecursionError rather than ValueError; and it accepts escaped lone UTF-16 surrogates
(``"\\ud800"``) that later fail wherever the text is encoded (SQLite, the audit log).
Both are refused here with a 400 and a reason, before any handler sees the body.
"""

from __future__ import annotations

import json
import re
from typing import Any

from node.net.reqsign import RequestRefused

MAX_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


def _depth_and_text(doc: Any, max_depth: int) -> None:
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: list[Any] = [*value.keys(), *value.values()]
        elif isinstance(value, list):
            children = value
        else:
            if isinstance(value, str) and _SURROGATE.search(value):
                raise RequestRefused(400, "bad_unicode", "request body contains a lone UTF-16 "
                                     "surrogate (text must be valid Unicode)")
            continue
        if depth > max_depth:
            raise RequestRefused(400, "too_deeply_nested",
                                 f"request body is nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)


def parse_json_object(body: bytes, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The body as a JSON object, or RequestRefused(400) saying what is wrong with it."""
    if not body:
        return {}
    try:
        doc = json.loads(body)
    except RecursionError:
        raise RequestRefused(400, "too_deeply_nested",
                             f"request body is nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestRefused(400, "malformed_json",
                             f"request body is not valid JSON ({exc.__class__.__name__})") from exc
    if not isinstance(doc, dict):
        raise RequestRefused(400, "malformed_json", "request body must be a JSON object")
    _depth_and_text(doc, max_depth)
    return doc
