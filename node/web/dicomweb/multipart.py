"""multipart/related bodies (PS3.18 8.6.1.2): written as a stream, read part by part.

Writing never holds a whole series: parts go out as their bytes are read. Reading (STOW)
caps each part and the whole body, so a client cannot make the node buffer without end.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from aiohttp.multipart import BodyPartReader, MultipartReader

MAX_PART_BYTES = 1 << 30


class MultipartError(ValueError):
    """The request body is not a well-formed multipart/related message (400)."""


def new_boundary() -> str:
    return "medfed-" + secrets.token_hex(12)


def content_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    extra = f'; transfer-syntax={transfer_syntax}' if transfer_syntax else ""
    return f'multipart/related; type="{part_type}"{extra}; boundary={boundary}'


def part_head(boundary: str, part_type: str, *, location: str | None = None,
              first: bool = False) -> bytes:
    lead = b"" if first else b"\r\n"
    extra = f"Content-Location: {location}\r\n" if location else ""
    return lead + (f"--{boundary}\r\nContent-Type: {part_type}\r\n{extra}"
                   f"\r\n").encode()


def closing(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode()


def multipart_body(parts: list[bytes], part_type: str, boundary: str) -> bytes:
    """A whole (small) multipart body: frames, bulk data."""
    out = bytearray()
    for i, data in enumerate(parts):
        out += part_head(boundary, part_type, first=i == 0)
        out += data
    out += closing(boundary)
    return bytes(out)


@dataclass(frozen=True)
class ReceivedPart:
    content_type: str
    data: bytes


async def read_parts(request: web.Request, *, max_total: int) -> AsyncIterator[ReceivedPart]:
    """The parts of a multipart/related request, one at a time, within ``max_total`` bytes."""
    try:
        reader = MultipartReader(request.headers, request.content)
    except (AssertionError, ValueError, KeyError) as exc:
        raise MultipartError(f"the body is not multipart/related ({exc})") from None
    total = 0
    while True:
        try:
            part = await reader.next()
        except (ValueError, AssertionError) as exc:
            raise MultipartError(f"malformed multipart body: {exc}") from None
        if part is None:
            return
        if not isinstance(part, BodyPartReader):
            raise MultipartError("nested multipart bodies are not accepted")
        data = bytearray()
        while chunk := await part.read_chunk(1 << 20):
            data += chunk
            total += len(chunk)
            if total > max_total or len(data) > MAX_PART_BYTES:
                raise MultipartError(f"the body is larger than {max_total >> 20} MB; send "
                                     "fewer instances per request")
        yield ReceivedPart(part.headers.get("Content-Type", ""), bytes(data))
