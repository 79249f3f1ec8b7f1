"""Frames between the parent and a worker: 4-byte length, then one JSON document.

Explicit framing over pipes (no pickle): what crosses is plain JSON; datagram payloads
travel as base64 text (``pack_bytes``). The parent's side waits with a deadline on
every read and write, and says which worker died or stalled.
"""

from __future__ import annotations

import base64
import json
import os
import select
import struct
import time
from typing import Any, BinaryIO

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30


class ChannelError(RuntimeError):
    """The other end of a channel closed, stalled past its deadline, or sent garbage."""


def pack_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unpack_bytes(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def encode(doc: Any) -> bytes:
    body = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    return HEADER.pack(len(body)) + body


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ChannelError(f"a frame is not JSON: {exc}") from exc


class BlockingChannel:
    """The worker's side: blocking reads and writes on its stdin/stdout pipes (the
    parent is the clock; when it goes away, the worker's read ends with EOF)."""

    def __init__(self, inp: BinaryIO, out: BinaryIO) -> None:
        self._in, self._out = inp, out

    def send(self, doc: Any) -> None:
        self._out.write(encode(doc))
        self._out.flush()

    def receive(self) -> Any:
        size = HEADER.unpack(self._exactly(HEADER.size))[0]
        if size > MAX_FRAME:
            raise ChannelError(f"frame of {size} bytes announced (limit {MAX_FRAME})")
        return _decode(self._exactly(size))

    def _exactly(self, n: int) -> bytes:
        data = self._in.read(n)
        if data is None or len(data) < n:
            raise ChannelError("the parent closed the channel")
        return data


class DeadlineChannel:
    """The parent's side of one worker's pipes: every read and write has a deadline."""

    def __init__(self, name: str, write_fd: int, read_fd: int) -> None:
        self.name = name
        self._w, self._r = write_fd, read_fd
        os.set_blocking(write_fd, False)
        os.set_blocking(read_fd, False)
        self._buffer = bytearray()

    def send(self, doc: Any, timeout_s: float) -> None:
        data = memoryview(encode(doc))
        deadline = time.monotonic() + timeout_s
        while data:
            self._wait(deadline, write=True)
            try:
                sent = os.write(self._w, data)
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ChannelError(f"{self.name} closed its input") from exc
            data = data[sent:]

    def receive(self, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        self._fill(HEADER.size, deadline)
        size = HEADER.unpack(bytes(self._buffer[:HEADER.size]))[0]
        if size > MAX_FRAME:
            raise ChannelError(f"{self.name} announced a frame of {size} bytes")
        self._fill(HEADER.size + size, deadline)
        body = bytes(self._buffer[HEADER.size:HEADER.size + size])
        del self._buffer[:HEADER.size + size]
        return _decode(body)

    def _fill(self, n: int, deadline: float) -> None:
        while len(self._buffer) < n:
            self._wait(deadline, write=False)
            try:
                chunk = os.read(self._r, max(65536, n - len(self._buffer)))
            except BlockingIOError:
                continue
            if not chunk:
                raise ChannelError(f"{self.name} closed its output")
            self._buffer += chunk

    def _wait(self, deadline: float, *, write: bool) -> None:
        left = deadline - time.monotonic()
        fds = [self._w] if write else [self._r]
        ready = select.select([], fds, [], max(left, 0))[1] if write else \
            select.select(fds, [], [], max(left, 0))[0]
        if not ready:
            raise ChannelError(f"{self.name} did not {'read' if write else 'answer'} "
                               f"within its deadline")
