"""Decode primitives that write into the caller's buffers: secretstream pull and zstd.

Why: the fetch receiver is CPU-bound at 1 Gbit/s (``python -m bench.wan``), and the
public APIs copy. pynacl's ``crypto_secretstream_xchacha20poly1305_pull`` takes only
``bytes`` (a copy of every 1 MiB message) and returns a fresh ``bytes`` (another copy and
allocation); python-zstandard returns fresh ``bytes`` per output block, which the record
parser then copies into the instance buffer. Per 300-slice CT bundle (56 MB stored,
158 MB of DICOM) that is about 270 MB of extra copies and allocations. Both packages ship
their C libraries as cffi modules (``nacl._sodium``, ``zstandard._cffi``); calling them
directly decrypts into one reused plaintext buffer and decompresses straight into each
instance's buffer. cffi releases the GIL for every call, as the public APIs do.

If a build lacks either module the public APIs are used instead (same results, with the
copies): ``NATIVE_SODIUM`` / ``NATIVE_ZSTD`` say which path is active, and the tests run
both.
"""

from __future__ import annotations

from typing import Any

import zstandard
from nacl.bindings import (
    crypto_secretstream_xchacha20poly1305_ABYTES as ABYTES,
    crypto_secretstream_xchacha20poly1305_init_pull,
    crypto_secretstream_xchacha20poly1305_pull,
    crypto_secretstream_xchacha20poly1305_state,
)
from nacl.exceptions import CryptoError

try:  # pynacl's own cffi module (the same libsodium the public bindings call)
    from nacl._sodium import ffi as _nffi, lib as _nlib
    NATIVE_SODIUM = hasattr(_nlib, "crypto_secretstream_xchacha20poly1305_pull")
except ImportError:  # pragma: no cover - depends on the pynacl build
    _nffi = _nlib = None
    NATIVE_SODIUM = False

try:  # python-zstandard's cffi backend module (the same bundled libzstd as its C backend)
    from zstandard._cffi import ffi as _zffi, lib as _zlib
    NATIVE_ZSTD = all(hasattr(_zlib, name) for name in (
        "ZSTD_createDCtx", "ZSTD_freeDCtx", "ZSTD_decompressStream", "ZSTD_DCtx_setParameter",
        "ZSTD_isError", "ZSTD_getErrorName", "ZSTD_d_windowLogMax"))
except ImportError:  # pragma: no cover - depends on the zstandard build
    _zffi = _zlib = None
    NATIVE_ZSTD = False


class StreamPull:
    """The pulling side of one XChaCha20-Poly1305 secretstream, decrypting into ``out``."""

    def __init__(self, key: bytes, stream_header: bytes) -> None:
        self._state = crypto_secretstream_xchacha20poly1305_state()
        crypto_secretstream_xchacha20poly1305_init_pull(self._state, stream_header, key)
        self._native = NATIVE_SODIUM
        if self._native:
            self._mlen = _nffi.new("unsigned long long *")
            self._tag = _nffi.new("unsigned char *")

    def pull(self, message: memoryview, ad: bytes | None, out: bytearray) -> tuple[int, int]:
        """Decrypt one message into ``out`` (at least ``len(message) - ABYTES`` long);
        returns (plaintext length, tag). Raises CryptoError if it does not authenticate."""
        size = len(message) - ABYTES
        if size < 0 or size > len(out):
            raise CryptoError("secretstream message has an impossible length")
        if not self._native:
            plain, tag = crypto_secretstream_xchacha20poly1305_pull(self._state, bytes(message), ad)
            out[:len(plain)] = plain
            return len(plain), tag
        rc = _nlib.crypto_secretstream_xchacha20poly1305_pull(
            self._state.statebuf, _nffi.from_buffer(out), self._mlen, self._tag,
            _nffi.from_buffer(message), len(message),
            _nffi.NULL if ad is None else ad, 0 if ad is None else len(ad))
        if rc != 0:
            raise CryptoError("Unexpected failure")
        return int(self._mlen[0]), int(self._tag[0])


class ZstdError(Exception):
    """The compressed data is corrupt (zstd's own reason in the message)."""


class Inflater:
    """One zstd stream decompressed into caller-chosen slices of caller buffers.

    ``give(data)`` sets the next compressed input (kept until consumed); ``into(buf, lo,
    hi)`` decompresses into ``buf[lo:hi]`` and returns how many bytes it wrote, fewer than
    asked only once the input given so far is used up. Frames that follow each other are
    decoded in turn, as python-zstandard's stream writer does."""

    def __init__(self, window_log: int) -> None:
        self._native = NATIVE_ZSTD
        if self._native:
            dctx = _zlib.ZSTD_createDCtx()
            if dctx == _zffi.NULL:
                raise MemoryError("zstd decompression context")
            self._dctx = _zffi.gc(dctx, _zlib.ZSTD_freeDCtx)
            self._check(_zlib.ZSTD_DCtx_setParameter(self._dctx, _zlib.ZSTD_d_windowLogMax, window_log))
            self._in = _zffi.new("ZSTD_inBuffer *")
            self._out = _zffi.new("ZSTD_outBuffer *")
            self._held: Any = None          # keeps the input's buffer alive while zstd reads it
        else:
            decompressor = zstandard.ZstdDecompressor(max_window_size=1 << window_log)
            self._obj = decompressor.decompressobj()
            self._pending = memoryview(b"")

    @staticmethod
    def _check(code: int) -> int:
        if _zlib.ZSTD_isError(code):
            reason = _zffi.string(_zlib.ZSTD_getErrorName(code)).decode(errors="replace")
            raise ZstdError(reason)
        return code

    def give(self, data: bytearray | bytes | memoryview) -> None:
        if self._native:
            self._held = _zffi.from_buffer(data)
            self._in.src, self._in.size, self._in.pos = self._held, len(data), 0
            return
        try:
            out = self._obj.decompress(bytes(data))
        except zstandard.ZstdError as exc:
            raise ZstdError(str(exc)) from None
        self._pending = memoryview(out) if not self._pending else memoryview(bytes(self._pending) + out)

    def into(self, buf: bytearray, lo: int, hi: int) -> int:
        if hi <= lo:
            return 0
        if not self._native:
            take = min(hi - lo, len(self._pending))
            buf[lo:lo + take] = self._pending[:take]
            self._pending = self._pending[take:]
            return take
        out = self._out
        target = _zffi.from_buffer(buf)
        out.dst, out.size, out.pos = target + lo, hi - lo, 0
        while out.pos < out.size:
            before_in, before_out = self._in.pos, out.pos
            self._check(_zlib.ZSTD_decompressStream(self._dctx, out, self._in))
            if self._in.pos == before_in and out.pos == before_out:
                break                       # needs more input
        return int(out.pos)
