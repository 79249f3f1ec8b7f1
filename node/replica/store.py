"""Replica files this node holds for other sites: ciphertext only, verified by content id.

A replica is a bundle's stored bytes under ``data_dir/replicas/<bundle_id>``. It is
written to a temporary file while hashing, fsynced, and renamed only if SHA-256 of the
bytes equals the bundle id, so a half-received or altered bundle is never held.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import BinaryIO

BUNDLE_ID = re.compile(r"^[0-9a-f]{64}$")
FIRST_READ = 1 << 18     # the first chunk a stream sends: on the wire sooner than a full one
READ_CHUNK = 1 << 20     # then: one worker-thread hop and one TLS write per MiB


class ReplicaError(Exception):
    """A replica cannot be stored or read (bad id, hash mismatch, too large, disk)."""


def check_bundle_id(bundle_id: str) -> str:
    if not isinstance(bundle_id, str) or not BUNDLE_ID.match(bundle_id):
        raise ReplicaError("a bundle id is 64 lowercase hexadecimal characters")
    return bundle_id


HOLDER_SUFFIX = ".for"   # sidecar: the member a replica is held for (its budget pays)


class ReplicaStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def bytes_held_for(self, member: str) -> int:
        """Bytes of the replicas this node holds because ``member`` offered them."""
        if not self.root.is_dir():
            return 0
        total = 0
        for sidecar in self.root.glob(f"*{HOLDER_SUFFIX}"):
            try:
                if sidecar.read_text().strip() == member:
                    total += (self.root / sidecar.name[:-len(HOLDER_SUFFIX)]).stat().st_size
            except OSError:
                continue   # removed meanwhile
        return total

    def path(self, bundle_id: str) -> Path:
        return self.root / check_bundle_id(bundle_id)

    def has(self, bundle_id: str) -> bool:
        return self.path(bundle_id).is_file()

    def size(self, bundle_id: str) -> int:
        return self.path(bundle_id).stat().st_size

    def sweep_temp_files(self) -> int:
        """Remove partial downloads left by a crash."""
        if not self.root.is_dir():
            return 0
        stale = [p for p in self.root.iterdir() if p.name.startswith(".")]
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)

    async def write(self, bundle_id: str, chunks: AsyncIterable[bytes], *, max_bytes: int,
                    held_for: str = "") -> int:
        """Store a replica from ``chunks``; returns its size. Nothing is kept on any error.
        ``held_for``: the member whose replica budget the copy counts against."""
        final = self.path(bundle_id)
        self.root.mkdir(parents=True, exist_ok=True)
        if held_for:
            (self.root / f"{bundle_id}{HOLDER_SUFFIX}").write_text(held_for + "\n")
        tmp = self.root / f".{bundle_id}.{os.getpid()}.{id(chunks):x}.tmp"
        digest = hashlib.sha256()
        size = 0
        handle = await asyncio.to_thread(open, tmp, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise ReplicaError(f"replica exceeds the {max_bytes}-byte limit it was offered with")
                digest.update(chunk)
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(_flush_and_sync, handle)
            handle.close()
            if digest.hexdigest() != bundle_id:
                raise ReplicaError("received bytes do not hash to the bundle id; replica refused")
            os.replace(tmp, final)
            await asyncio.to_thread(_fsync_dir, self.root)
        except BaseException:
            handle.close()
            tmp.unlink(missing_ok=True)
            if held_for and not final.exists():
                (self.root / f"{bundle_id}{HOLDER_SUFFIX}").unlink(missing_ok=True)
            raise
        return size

    async def read(self, bundle_id: str, start: int = 0, length: int | None = None
                   ) -> AsyncIterator[bytes]:
        """The held bytes (or a range of them), in chunks."""
        async for chunk in read_file(self.path(bundle_id), start, length):
            yield chunk

    async def verify(self, bundle_id: str) -> bool:
        """True when the held bytes still hash to the bundle id."""
        digest = hashlib.sha256()
        async for chunk in self.read(bundle_id):
            digest.update(chunk)
        return digest.hexdigest() == bundle_id

    def remove(self, bundle_id: str) -> bool:
        (self.root / f"{check_bundle_id(bundle_id)}{HOLDER_SUFFIX}").unlink(missing_ok=True)
        try:
            self.path(bundle_id).unlink()
        except FileNotFoundError:
            return False
        return True


async def read_file(path: Path, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
    """A stored bundle (or a range of it) in chunks: what both serving paths send, the
    owner's (``sharing.owner``) and a replica holder's (``replica.serve``).

    Why these sizes: every chunk is a worker-thread hop and one TLS record run; 64 KiB
    chunks cost a replica holder ~860 hops per 56 MB bundle, against ~56 with 1 MiB. The
    first chunk is 256 KiB and read in the same hop as open and seek, so the first bytes
    leave while the rest is read (a 1 MiB read and encryption is ~1 ms more before the
    first byte is on the wire)."""
    def first() -> tuple[BinaryIO, bytes]:
        handle = open(path, "rb")
        try:
            handle.seek(start)
            return handle, handle.read(FIRST_READ if length is None else min(FIRST_READ, length))
        except BaseException:
            handle.close()
            raise

    handle, chunk = await asyncio.to_thread(first)
    try:
        left = None if length is None else length - len(chunk)
        while chunk:
            yield chunk
            if left is not None and left <= 0:
                break
            want = READ_CHUNK if left is None else min(READ_CHUNK, left)
            chunk = await asyncio.to_thread(handle.read, want)
            if left is not None:
                left -= len(chunk)
    finally:
        handle.close()


async def hash_range(path: Path, nonce: bytes, start: int, length: int) -> str:
    """SHA-256(nonce || bytes[start:start+length]) — the answer to a retrievability challenge."""
    digest = hashlib.sha256(nonce)
    async for chunk in read_file(path, start, length):
        digest.update(chunk)
    return digest.hexdigest()


def _flush_and_sync(handle: object) -> None:
    handle.flush()  # type: ignore[attr-defined]
    os.fsync(handle.fileno())  # type: ignore[attr-defined]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
