"""Strict reader for the DHT's fixed binary formats.

Every byte that arrives over UDP is hostile until parsed, so parsing is done by one
small reader that refuses truncation and trailing bytes instead of by ad-hoc slicing
scattered over the codecs (no pickle, no self-describing format that could smuggle
unexpected types).
"""

from __future__ import annotations

import struct


class DecodeError(ValueError):
    """Bytes that do not follow the DHT's binary format; the message says which field."""


class TaggedError(ValueError):
    """A refusal with a short stable ``reason`` tag, used as a stats counter name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Reader:
    """Consumes a byte string front to back; every read is bounds-checked."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int, what: str = "field") -> bytes:
        if n < 0 or self.remaining < n:
            raise DecodeError(f"truncated {what}: need {n} bytes, have {self.remaining}")
        chunk = bytes(self._data[self._pos:self._pos + n])
        self._pos += n
        return chunk

    def _unpack(self, fmt: struct.Struct, what: str) -> int:
        return int(fmt.unpack(self.take(fmt.size, what))[0])

    def u8(self, what: str = "u8") -> int:
        return self._unpack(_U8, what)

    def u16(self, what: str = "u16") -> int:
        return self._unpack(_U16, what)

    def u32(self, what: str = "u32") -> int:
        return self._unpack(_U32, what)

    def u64(self, what: str = "u64") -> int:
        return self._unpack(_U64, what)

    def done(self, what: str = "message") -> None:
        if self.remaining:
            raise DecodeError(f"{self.remaining} unexpected trailing bytes after {what}")


def u8(v: int) -> bytes:
    return _U8.pack(v)


def u16(v: int) -> bytes:
    return _U16.pack(v)


def u32(v: int) -> bytes:
    return _U32.pack(v)


def u64(v: int) -> bytes:
    return _U64.pack(v)
