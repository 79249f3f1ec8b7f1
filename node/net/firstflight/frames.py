"""Wire framing of a first-flight connection: a magic, then 2-byte-length Noise messages.

Pure (no I/O). Noise messages are at most 65,535 bytes (the Noise spec); the length
prefix is the spec's suggested framing.
"""

from __future__ import annotations

import struct

MAGIC = b"MFF1"            # first byte 0x4d: never a TLS record type (0x14-0x18)
MAX_MESSAGE = 65535        # Noise's bound on one message, tag included
TAG = 16                   # AEAD tag added to every encrypted payload
MAX_CHUNK = MAX_MESSAGE - TAG
_LEN = struct.Struct(">H")


class FrameError(Exception):
    """The bytes on a first-flight connection are not what the protocol allows."""


def frame(message: bytes) -> bytes:
    if len(message) > MAX_MESSAGE:
        raise FrameError(f"a Noise message is at most {MAX_MESSAGE} bytes")
    return _LEN.pack(len(message)) + message


class FrameReader:
    """Splits a byte stream into messages; ``magic`` first if ``expect_magic``."""

    def __init__(self, *, expect_magic: bool = False) -> None:
        self._buffer = bytearray()
        self._magic_left = expect_magic

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        if self._magic_left:
            if len(self._buffer) < len(MAGIC):
                if not MAGIC.startswith(bytes(self._buffer)):
                    raise FrameError("not a first-flight connection (bad magic)")
                return []
            if bytes(self._buffer[:len(MAGIC)]) != MAGIC:
                raise FrameError("not a first-flight connection (bad magic)")
            del self._buffer[:len(MAGIC)]
            self._magic_left = False
        messages: list[bytes] = []
        view = self._buffer
        start = 0
        while len(view) - start >= 2:
            (size,) = _LEN.unpack_from(view, start)
            if len(view) - start - 2 < size:
                break
            messages.append(bytes(view[start + 2:start + 2 + size]))
            start += 2 + size
        if start:
            del self._buffer[:start]
        return messages

    @property
    def buffered(self) -> int:
        return len(self._buffer)
