"""File edges of the audit log: durable writes and reading complete lines from the end."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


CHUNK = 1 << 16


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, chunks: Iterator[bytes]) -> None:
    """tmp + fsync + rename + fsync(dir): the file is either old or whole new."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for chunk in chunks:
            write_all(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def complete_end(fd: int, size: int) -> int:
    """Offset just past the last newline (0 if none): where the torn tail starts."""
    pos = size
    while pos > 0:
        start = max(0, pos - CHUNK)
        found = os.pread(fd, pos - start, start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        pos = start
    return 0


def lines_backwards(fd: int, end: int) -> Iterator[bytes]:
    """Complete lines of ``fd[:end]`` (which ends with a newline), last line first."""
    pos, carry = end - 1, b""
    while pos > 0:
        start = max(0, pos - CHUNK)
        parts = (os.pread(fd, pos - start, start) + carry).split(b"\n")
        carry, pos = parts[0], start
        yield from reversed(parts[1:])
    if end > 0:
        yield carry
