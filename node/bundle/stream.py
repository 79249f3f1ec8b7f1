"""Series bundle: the one encrypted, compressed, streamable file a de-identified series travels as.

Layout of a stored bundle (every byte of it is hashed into the bundle id)::

    header   44 bytes   BundleHeader: magic "MFBUNDLE", version, codec, zstd level,
                        zstd window log, shuffle flag, chunk size, secretstream header
    chunk 0..N-1        XChaCha20-Poly1305 secretstream messages, each exactly
                        chunk_size + 17 bytes except the last (1..chunk_size + 17 bytes);
                        chunk 0 carries the header bytes as associated data; the last
                        chunk, and only it, is tagged TAG_FINAL; nothing may follow it

The plaintext of the chunks, concatenated, is one zstd frame whose content is a
sequence of records: per instance ``INSTANCE_HEAD`` (kind "I", length, shuffled
region offset and length) then the instance bytes (16-bit pixel data byte-plane
shuffled when the region length is non-zero), then one ``END_RECORD`` (kind "E",
instance count, total instance bytes).

Why each piece:

* bundle id = SHA-256 over exactly the stored bytes (header + all chunks, as on disk
  and on the wire), hex. Replica holders can verify what they store without the key;
  writer and reader compute it while streaming.
* Tampering: secretstream chains every chunk to the previous one, so a flipped bit,
  swapped or dropped chunk fails authentication; the header is associated data of
  chunk 0; a stream cut at a chunk boundary is caught because its last chunk is not
  TAG_FINAL; bytes after the final chunk are refused. Plaintext is handed out as soon
  as each chunk authenticates, so a reader must treat the series as valid only once
  ``finish()`` (or the ``read_bundle`` iterator) has completed without error.
* One fresh random 32-byte key per bundle (``new_bundle_key``); the key is what gets
  Shamir-split, the bundle itself can sit on any replica holder.
* Memory: the writer holds one instance plus one chunk; the reader one instance plus
  one chunk plus the zstd window (<= 2**window_log, checked against the header).

Codec choice, measured with ``python -m bench.bundle`` (2 vCPUs, shared with other
work). Data: 100-slice synthetic CT series from /work/shared/bench/make_series.py
(52.6 MB of Part-10 files, 512x512 uint16, 12 bits stored) and a numpy phantom of the
same shape. MB/s count raw DICOM bytes through the whole write_bundle/read_bundle
(shuffle, zstd, secretstream, SHA-256), one thread unless stated; two runs:

    codec                          ratio      write MB/s     read MB/s
    shuffle + zstd-1  (default)    2.86-2.95  552-593        687-743
    shuffle + zstd-3               2.83-2.88  197-209        565-625
    zstd-3, no shuffle             2.40-2.43  133-142        445-473
    zstd-1, no shuffle             2.14-2.28  185-219        519-554
    shuffle + zstd-3, threads=2    2.83-2.91  333-352 wall,  ~205 per core
    ``zstd -3`` CLI on raw bytes   2.39-2.43  (anchor ratio)

Why shuffle + level 1: the hi/lo byte-plane shuffle of the pixel data turns the
near-constant high bytes of 12-bit CT into long runs that zstd's fastest level
already finds; higher levels only search harder for matches the shuffled noise
does not contain, so level 3 costs 2.8x the time for a slightly lower ratio.
In a one-off run (not in the bench), delta coding before the shuffle lowered the
ratio (2.31: differencing adds the noise of two pixels) and negative levels drop
Huffman coding of literals (1.95). zstd threads=2 gives no per-core gain, so the
default is one thread (``threads`` exists for a node with idle cores).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import zstandard
from nacl.bindings import (
    crypto_secretstream_xchacha20poly1305_ABYTES as ABYTES,
    crypto_secretstream_xchacha20poly1305_TAG_FINAL as TAG_FINAL,
    crypto_secretstream_xchacha20poly1305_TAG_MESSAGE as TAG_MESSAGE,
    crypto_secretstream_xchacha20poly1305_init_push,
    crypto_secretstream_xchacha20poly1305_push,
    crypto_secretstream_xchacha20poly1305_state,
)
from nacl.exceptions import CryptoError

from node.bundle.format import (
    END_RECORD,
    HEADER_SIZE,
    INSTANCE_HEAD,
    KIND_END,
    KIND_INSTANCE,
    MAX_LEVEL,
    MIN_LEVEL,
    BundleError,
    BundleFormatError,
    BundleHeader,
    BundleKeyError,
    BundleTamperedError,
    order_instances,
    pixel_region,
    shuffle16,
    unshuffle16_into,
)
from node.bundle.native import Inflater, StreamPull, ZstdError

__all__ = [
    "BundleDecoder", "BundleEncoder", "BundleError", "BundleFormatError", "BundleInfo",
    "BundleKeyError", "BundleTamperedError", "iter_bundle_chunks", "new_bundle_key",
    "order_instances", "read_bundle", "write_bundle",
]

KEY_BYTES = 32
DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_LEVEL = 1
DEFAULT_SHUFFLE = True
DEFAULT_MAX_INSTANCE_BYTES = 2 << 30
POOL_BYTES = 32 << 20        # instance buffers a decoder keeps for reuse (BundleDecoder.release)


def new_bundle_key() -> bytes:
    """A fresh random key; never reuse one for two bundles."""
    return secrets.token_bytes(KEY_BYTES)


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise BundleKeyError(f"a bundle key is {KEY_BYTES} bytes (got {type(key).__name__} of another size)")
    return bytes(key)


@dataclass(frozen=True)
class BundleInfo:
    """What a finished write or read knows about the bundle."""

    bundle_id: str
    instances: int
    plain_bytes: int
    stored_bytes: int
    header: BundleHeader


def _default_window_log(level: int) -> int:
    """zstd's window for ``level``; 0 (refused by header validation) for levels out of range."""
    if not MIN_LEVEL <= level <= MAX_LEVEL:
        return 0
    return int(zstandard.ZstdCompressionParameters.from_level(level).window_log)


class BundleEncoder:
    """Push instances in bundle order, get stored bytes back; no I/O, so usable from asyncio."""

    def __init__(
        self,
        key: bytes,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        level: int = DEFAULT_LEVEL,
        shuffle: bool = DEFAULT_SHUFFLE,
        threads: int = 0,
    ) -> None:
        self._state = crypto_secretstream_xchacha20poly1305_state()
        stream_header = crypto_secretstream_xchacha20poly1305_init_push(self._state, _check_key(key))
        window_log = _default_window_log(level)
        self.header = BundleHeader(chunk_size, level, window_log, shuffle, stream_header)
        self._header_bytes = self.header.to_bytes()  # validates the settings
        params = zstandard.ZstdCompressionParameters.from_level(
            level, window_log=window_log, threads=threads, write_checksum=0, write_content_size=0
        )
        self._zstd = zstandard.ZstdCompressor(compression_params=params).compressobj()
        self._pending = bytearray()
        self._hash = hashlib.sha256()
        self._stored = 0
        self._chunks = 0
        self._count = 0
        self._plain = 0
        self._started = False
        self._info: BundleInfo | None = None

    def add(self, instance: bytes | bytearray | memoryview) -> bytes:
        """Append one instance; returns the stored bytes that became ready (maybe empty)."""
        if self._info is not None:
            raise BundleError("bundle is already finished; start a new BundleEncoder")
        if not isinstance(instance, (bytes, bytearray, memoryview)):
            raise BundleError(f"instance {self._count} is {type(instance).__name__}, not bytes")
        raw = bytes(instance)
        offset, length = pixel_region(raw) if self.header.shuffle else (0, 0)
        view = memoryview(raw)
        self._compress(INSTANCE_HEAD.pack(KIND_INSTANCE, len(raw), offset, length))
        if length:
            self._compress(view[:offset])
            self._compress(shuffle16(view[offset : offset + length]))
            self._compress(view[offset + length :])
        else:
            self._compress(view)
        self._count += 1
        self._plain += len(raw)
        return self._drain(final=False)

    def finish(self) -> bytes:
        """Close the stream: END record, zstd epilogue, TAG_FINAL chunk."""
        if self._info is not None:
            raise BundleError("bundle is already finished")
        self._compress(END_RECORD.pack(KIND_END, self._count, self._plain))
        self._pending += self._zstd.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        out = self._drain(final=True)
        self._info = BundleInfo(self._hash.hexdigest(), self._count, self._plain, self._stored, self.header)
        return out

    @property
    def info(self) -> BundleInfo:
        if self._info is None:
            raise BundleError("bundle info is known only after finish()")
        return self._info

    def _compress(self, data: bytes | memoryview) -> None:
        self._pending += self._zstd.compress(data)

    def _drain(self, *, final: bool) -> bytes:
        # Keep at least one byte back until finish(), so the last chunk is never empty
        # and is always the one tagged FINAL.
        size = self.header.chunk_size
        pieces: list[bytes] = []
        if not self._started:
            pieces.append(self._header_bytes)
            self._started = True
        start = 0
        while len(self._pending) - start > size:
            pieces.append(self._seal(bytes(self._pending[start : start + size]), TAG_MESSAGE))
            start += size
        del self._pending[:start]
        if final:
            pieces.append(self._seal(bytes(self._pending), TAG_FINAL))
            self._pending.clear()
        out = b"".join(pieces)
        self._hash.update(out)
        self._stored += len(out)
        return out

    def _seal(self, plain: bytes, tag: int) -> bytes:
        ad = self._header_bytes if self._chunks == 0 else None
        self._chunks += 1
        return crypto_secretstream_xchacha20poly1305_push(self._state, plain, ad, tag)


class _BufferPool:
    """Instance buffers a consumer handed back (``BundleDecoder.release``), reused for
    instances of the same length. Why: a fresh ``bytearray`` per CT slice is zeroed and
    page-faulted in every time; on this VM that cost the receiver about as much as the
    zstd decoding itself (157 MB per 300-slice series). Thread-safe: the write thread
    hands buffers back while the decode thread takes them. Holds at most ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self._free: dict[int, list[bytearray]] = {}
        self._bytes = 0
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, size: int) -> bytearray:
        with self._lock:
            free = self._free.get(size)
            if free:
                self._bytes -= size
                return free.pop()
        return bytearray(size)

    def put(self, buffer: bytearray) -> None:
        size = len(buffer)
        with self._lock:
            if size and self._bytes + size <= self._limit:
                self._free.setdefault(size, []).append(buffer)
                self._bytes += size


class _RecordParser:
    """Cuts the decompressed stream into instances, decompressing each record straight
    into its place: the head into a small buffer, the instance bytes into the instance's
    own buffer, its shuffled pixel planes into a reused scratch buffer from which they
    are unshuffled into the instance buffer (no intermediate ``bytes``, no join)."""

    def __init__(self, inflater: Inflater, max_instance_bytes: int, shuffle_allowed: bool,
                 pool: _BufferPool) -> None:
        self._z = inflater
        self._max = max_instance_bytes
        self._shuffle_allowed = shuffle_allowed
        self._pool = pool
        self._head = bytearray(max(INSTANCE_HEAD.size, END_RECORD.size))
        self._have, self._need = 0, 1          # head bytes read / needed (1: the kind byte)
        self._body: bytearray | None = None
        self._segments: list[tuple[bytearray, int, int]] = []   # what is left to fill
        self._region = (0, 0)
        self._scratch = bytearray(0)
        self._trap = bytearray(1)
        self.done: list[bytearray] = []
        self.count = 0
        self.plain = 0
        self.end: tuple[int, int] | None = None

    def inflate(self, compressed: memoryview) -> None:
        """Decompress all of ``compressed`` into records."""
        z = self._z
        z.give(compressed)
        while True:
            if self.end is not None:
                if z.into(self._trap, 0, 1):
                    raise BundleFormatError("bundle has data after its END record")
                return
            if self._body is None:
                self._have += z.into(self._head, self._have, self._need)
                if self._have < self._need:
                    return                              # input used up
                self._read_head()
                continue
            buf, lo, hi = self._segments[0]
            got = z.into(buf, lo, hi)
            if lo + got < hi:
                self._segments[0] = (buf, lo + got, hi)
                return
            del self._segments[0]
            if not self._segments:
                self._complete()

    def _read_head(self) -> None:
        kind = self._head[0]
        if self._have == 1:
            need = {KIND_INSTANCE: INSTANCE_HEAD.size, KIND_END: END_RECORD.size}.get(kind)
            if need is None:
                raise BundleFormatError(f"bundle has an unknown record kind {kind:#04x}")
            self._need = need
            return
        self._have, self._need = 0, 1
        if kind == KIND_END:
            _, count, plain = END_RECORD.unpack_from(self._head)
            self.end = (count, plain)
        else:
            self._start_instance()

    def _start_instance(self) -> None:
        _, length, offset, region = INSTANCE_HEAD.unpack_from(self._head)
        if length > self._max:
            raise BundleFormatError(f"bundle instance of {length} bytes exceeds the {self._max}-byte limit")
        bad_region = region % 2 or offset + region > length or (region and not self._shuffle_allowed)
        if bad_region or (not region and offset):
            raise BundleFormatError("bundle instance record has an invalid shuffle region")
        body = self._pool.get(length)
        self._body, self._region = body, (offset, region)
        if region:
            if len(self._scratch) < region:
                self._scratch = bytearray(region)
            parts = [(body, 0, offset), (self._scratch, 0, region), (body, offset + region, length)]
        else:
            parts = [(body, 0, length)]
        self._segments = [part for part in parts if part[2] > part[1]]
        if not self._segments:
            self._complete()

    def _complete(self) -> None:
        body, (offset, region) = self._body, self._region
        assert body is not None
        if region:
            unshuffle16_into(memoryview(self._scratch)[:region], body, offset)
        self._body = None
        self.done.append(body)          # handed out as is: no copy of the whole instance
        self.count += 1
        self.plain += len(body)

    def take(self) -> list[bytearray]:
        done, self.done = self.done, []
        return done


class BundleDecoder:
    """Feed stored bytes as they arrive, get instances back in order; no I/O."""

    def __init__(
        self,
        key: bytes,
        *,
        expected_id: str | None = None,
        max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES,
    ) -> None:
        if expected_id is not None and (len(expected_id) != 64 or not _is_hex(expected_id)):
            raise BundleError("expected bundle id must be 64 hexadecimal characters")
        self._key = _check_key(key)
        self._expected = expected_id.lower() if expected_id else None
        self._max_instance = max_instance_bytes
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._stored = 0
        self._header: BundleHeader | None = None
        self._header_bytes = b""
        self._pull: StreamPull | None = None
        self._plain = bytearray()
        self._parser: _RecordParser | None = None
        self._pool = _BufferPool(POOL_BYTES)
        self._chunks = 0
        self._failed = False
        self._info: BundleInfo | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytearray]:
        """Consume stored bytes; return the instances completed by them (each a buffer of
        its own that the caller now owns: not copied into ``bytes`` first)."""
        return self._guard(self._feed, data)

    def finish(self) -> list[bytearray]:
        """End of input: verify the final chunk, END record and bundle id; return the last instances."""
        return self._guard(self._finish)

    def release(self, instance: bytearray) -> None:
        """Hand back an instance buffer this decoder returned, once nothing refers to it any
        more (e.g. it was written to a file); a later instance of the same size reuses it.
        Thread-safe. Never release a buffer something else still reads."""
        self._pool.put(instance)

    @property
    def info(self) -> BundleInfo:
        if self._info is None:
            raise BundleError("bundle info is known only after finish() succeeded")
        return self._info

    def _guard(self, step: Callable[..., list[bytearray]], *args: Any) -> list[bytearray]:
        if self._failed or self._info is not None:
            raise BundleError("this bundle decoder has already finished or failed; start a new one")
        try:
            return step(*args)
        except BundleError:
            self._failed = True
            raise
        except (zstandard.ZstdError, ZstdError) as exc:
            self._failed = True
            raise BundleFormatError(f"bundle compressed data is corrupt ({exc})") from None

    def _feed(self, data: bytes | bytearray | memoryview) -> list[bytearray]:
        self._hash.update(data)
        self._stored += len(data)
        self._buffer += data
        if self._header is None:
            if len(self._buffer) < HEADER_SIZE:
                return []
            self._start(bytes(self._buffer[:HEADER_SIZE]))
            del self._buffer[:HEADER_SIZE]
        assert self._header is not None
        message = self._header.chunk_size + ABYTES
        start = 0
        with memoryview(self._buffer) as view:  # decrypted from where it lies: no copy
            while len(view) - start > message:  # more follows, so this chunk is not the last
                if self._open(view[start : start + message]) == TAG_FINAL:
                    raise BundleTamperedError("bundle has data after its final chunk")
                start += message
        del self._buffer[:start]
        return self._parser.take() if self._parser else []

    def _start(self, header_bytes: bytes) -> None:
        header = BundleHeader.from_bytes(header_bytes)
        self._pull = StreamPull(self._key, header.stream_header)
        self._header, self._header_bytes = header, header_bytes
        self._plain = bytearray(header.chunk_size)
        inflater = Inflater(header.window_log)
        self._parser = _RecordParser(inflater, self._max_instance, header.shuffle, self._pool)

    def _open(self, chunk: memoryview) -> int:
        ad = self._header_bytes if self._chunks == 0 else None
        assert self._pull is not None and self._parser is not None
        try:
            size, tag = self._pull.pull(chunk, ad, self._plain)
        except CryptoError:
            raise BundleTamperedError(
                f"bundle chunk {self._chunks} failed authentication: wrong key, or the bundle "
                "was altered, reordered or cut"
            ) from None
        if tag not in (TAG_MESSAGE, TAG_FINAL):
            raise BundleTamperedError(f"bundle chunk {self._chunks} has an unexpected tag {tag}")
        self._chunks += 1
        with memoryview(self._plain) as plain:
            self._parser.inflate(plain[:size])
        return tag

    def _finish(self) -> list[bytearray]:
        if self._header is None:
            raise BundleFormatError(f"bundle is {self._stored} bytes, shorter than its {HEADER_SIZE}-byte header")
        if len(self._buffer) <= ABYTES:
            raise BundleTamperedError("bundle is truncated: its final chunk is missing")
        with memoryview(self._buffer) as view:
            tag = self._open(view)
        if tag != TAG_FINAL:
            raise BundleTamperedError("bundle is truncated: the stream ends without its final chunk")
        self._buffer.clear()
        parser = self._parser
        assert parser is not None
        if parser.end is None:
            raise BundleFormatError("bundle ends without its END record")
        if parser.end != (parser.count, parser.plain):
            raise BundleFormatError("bundle END record does not match the instances it holds")
        bundle_id = self._hash.hexdigest()
        if self._expected is not None and bundle_id != self._expected:
            raise BundleTamperedError(f"bundle id is {bundle_id}, expected {self._expected}")
        self._info = BundleInfo(bundle_id, parser.count, parser.plain, self._stored, self._header)
        return parser.take()


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def iter_bundle_chunks(instances: Iterable[bytes], encoder: BundleEncoder) -> Iterator[bytes]:
    """Stored bytes of a bundle as they become ready; ``encoder.info`` afterwards."""
    for instance in instances:
        out = encoder.add(instance)
        if out:
            yield out
    yield encoder.finish()


def write_bundle(
    instances: Iterable[bytes],
    out: BinaryIO,
    key: bytes,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    level: int = DEFAULT_LEVEL,
    shuffle: bool = DEFAULT_SHUFFLE,
    threads: int = 0,
) -> BundleInfo:
    """Write ``instances`` (already in bundle order) to ``out`` as one bundle."""
    encoder = BundleEncoder(key, chunk_size=chunk_size, level=level, shuffle=shuffle, threads=threads)
    for piece in iter_bundle_chunks(instances, encoder):
        out.write(piece)
    return encoder.info


def read_bundle(
    inp: BinaryIO,
    key: bytes,
    expected_id: str | None = None,
    *,
    read_size: int = 1 << 20,
    max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES,
) -> Iterator[bytearray]:
    """Yield each instance in order; raises at the end if the bundle is not intact."""
    decoder = BundleDecoder(key, expected_id=expected_id, max_instance_bytes=max_instance_bytes)
    while data := inp.read(read_size):
        yield from decoder.feed(data)
    yield from decoder.finish()
