"""Pure parts of the series-bundle format: header codec, record framing, pixel shuffle, order.

No I/O and no crypto here, so each piece is tested on its own; ``node.bundle.stream``
does the streaming, compression and encryption; see it for the byte layout.

The header holds only format parameters (magic, version, codec settings, chunk size,
the secretstream nonce header). Nothing in it comes from a DICOM file, so it cannot
carry PHI. The instance count and total plaintext size are not known when the header
has to go out (the writer streams), so they travel in the authenticated END record
at the end of the encrypted stream instead.
"""

from __future__ import annotations

import math
import struct
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

MAGIC = b"MFBUNDLE"
VERSION = 1
CODEC_ZSTD = 1
STREAM_HEADER_BYTES = 24  # crypto_secretstream_xchacha20poly1305_HEADERBYTES
MIN_CHUNK_SIZE = 512
MAX_CHUNK_SIZE = 16 << 20
MIN_LEVEL, MAX_LEVEL = -7, 19
MIN_WINDOW_LOG, MAX_WINDOW_LOG = 10, 24  # the reader's window memory stays <= 16 MiB

# magic, version, codec, zstd level, zstd window log, shuffle flag, 3 reserved zero bytes,
# chunk size, secretstream header
_HEADER = struct.Struct(">8sBBbBB3sI24s")
HEADER_SIZE = _HEADER.size  # 44

KIND_INSTANCE = 0x49  # "I"
KIND_END = 0x45  # "E"
# kind, instance length, shuffled region offset, shuffled region length
INSTANCE_HEAD = struct.Struct(">BQQQ")
# kind, instance count, total instance bytes
END_RECORD = struct.Struct(">BQQ")

# (7FE0,0010) PixelData, explicit VR little endian, VR "OW", reserved 0000, then u32 length
_PIXEL_OW = b"\xe0\x7f\x10\x00OW\x00\x00"
_UNDEFINED_LENGTH = 0xFFFFFFFF


class BundleError(Exception):
    """A series bundle could not be written or read."""


class BundleFormatError(BundleError):
    """The bytes are not a bundle this version can read (wrong magic, version, settings)."""


class BundleTamperedError(BundleError):
    """The bundle fails authentication: altered, truncated, reordered, extended, or wrong key."""


class BundleKeyError(BundleError):
    """A bundle key has the wrong shape."""


@dataclass(frozen=True)
class BundleHeader:
    """Format parameters in clear text; authenticated as associated data of chunk 0."""

    chunk_size: int
    level: int
    window_log: int
    shuffle: bool
    stream_header: bytes
    version: int = VERSION
    codec: int = CODEC_ZSTD

    def to_bytes(self) -> bytes:
        _validate_header(self)
        return _HEADER.pack(
            MAGIC, self.version, self.codec, self.level, self.window_log, int(self.shuffle),
            b"\0\0\0", self.chunk_size, self.stream_header,
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> "BundleHeader":
        if len(raw) < HEADER_SIZE:
            raise BundleFormatError(f"bundle is {len(raw)} bytes, shorter than its {HEADER_SIZE}-byte header")
        magic, version, codec, level, window_log, shuffle, reserved, chunk_size, stream_header = (
            _HEADER.unpack_from(raw)
        )
        if magic != MAGIC:
            raise BundleFormatError("not a medfed series bundle (magic bytes do not match)")
        if version != VERSION:
            raise BundleFormatError(f"bundle format version {version} is not supported by this node (reads {VERSION})")
        if reserved != b"\0\0\0" or shuffle not in (0, 1):
            raise BundleFormatError("bundle header has unknown flags set")
        header = cls(chunk_size, level, window_log, bool(shuffle), stream_header, version, codec)
        _validate_header(header)
        return header


def _validate_header(h: BundleHeader) -> None:
    if h.codec != CODEC_ZSTD:
        raise BundleFormatError(f"bundle codec {h.codec} is not supported (only zstd = {CODEC_ZSTD})")
    if not MIN_CHUNK_SIZE <= h.chunk_size <= MAX_CHUNK_SIZE:
        raise BundleFormatError(f"bundle chunk size {h.chunk_size} is outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
    if not MIN_LEVEL <= h.level <= MAX_LEVEL:
        raise BundleFormatError(f"zstd level {h.level} is outside {MIN_LEVEL}..{MAX_LEVEL}")
    if not MIN_WINDOW_LOG <= h.window_log <= MAX_WINDOW_LOG:
        raise BundleFormatError(f"zstd window log {h.window_log} is outside {MIN_WINDOW_LOG}..{MAX_WINDOW_LOG}")
    if len(h.stream_header) != STREAM_HEADER_BYTES:
        raise BundleFormatError("bundle stream header has the wrong length")


def pixel_region(instance: bytes) -> tuple[int, int]:
    """(offset, length) of the 16-bit native pixel data worth shuffling, or (0, 0).

    A heuristic: walk explicit-VR "OW" PixelData elements, jumping over each value
    (so pixel bytes are never searched), and take the last one: an icon image in a
    sequence comes before the main PixelData. The record stores the region it
    shuffled, so a wrong guess costs ratio, never correctness.
    """
    found = (0, 0)
    at = instance.find(_PIXEL_OW)
    while 0 <= at and at + 12 <= len(instance):
        (length,) = struct.unpack_from("<I", instance, at + 8)
        offset = at + 12
        if length != _UNDEFINED_LENGTH and length > 0 and length % 2 == 0 and offset + length <= len(instance):
            found = (offset, length)
            at = instance.find(_PIXEL_OW, offset + length)
        else:
            at = instance.find(_PIXEL_OW, at + 1)
    return found


def shuffle16(region: bytes | memoryview) -> bytes:
    """Low bytes of all 16-bit words, then high bytes: the high plane of 12-bit CT is near constant."""
    words = np.frombuffer(region, dtype="<u2")
    return (words & 0xFF).astype(np.uint8).tobytes() + (words >> 8).astype(np.uint8).tobytes()


def unshuffle16(region: bytes | memoryview) -> bytes:
    """Inverse of ``shuffle16``."""
    return _unshuffled_words(region).tobytes()


def unshuffle16_into(planes: bytes | bytearray | memoryview, out: bytearray, offset: int) -> None:
    """Inverse of ``shuffle16``: the words of ``planes`` (low bytes, then high bytes) written
    into ``out[offset:offset + len(planes)]``. Two passes over the output, reading planes
    that are still in cache (the decoder decompresses them into a reused scratch buffer)."""
    size = len(planes)
    src = np.frombuffer(planes, dtype=np.uint8, count=size).reshape(2, size // 2)
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        out[offset:offset + size] = _unshuffled_words(planes).tobytes()
        return
    words = np.frombuffer(out, dtype=np.uint16, count=size // 2, offset=offset)
    np.left_shift(src[1], 8, out=words, dtype=np.uint16)
    np.bitwise_or(words, src[0], out=words)


def _unshuffled_words(region: bytes | memoryview) -> "np.ndarray[Any, np.dtype[np.uint16]]":
    planes = np.frombuffer(region, dtype=np.uint8).reshape(2, -1)
    words = planes[1].astype("<u2")
    words <<= 8
    words |= planes[0]
    return words


SliceGeometry = tuple[int | None, Sequence[float] | None, Sequence[float] | None]


def _normal(orientation: Sequence[float]) -> tuple[float, float, float]:
    rx, ry, rz, cx, cy, cz = (float(v) for v in orientation)
    return ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx


def order_instances(slices: Sequence[SliceGeometry]) -> list[int]:
    """Indices of ``slices`` in bundle order.

    Each item is (InstanceNumber, ImagePositionPatient, ImageOrientationPatient), any may
    be None. When every slice has a position and all share one orientation, order is
    ascending position along the slice normal (the order a 3-D volume needs), ties by
    InstanceNumber; otherwise by InstanceNumber, missing numbers last. Input order breaks
    remaining ties, so the result is deterministic.
    """

    def by_number(i: int) -> tuple[bool, int]:
        number = slices[i][0]
        return number is None, number if number is not None else 0

    indices = list(range(len(slices)))
    geometry = [(p, o) for _, p, o in slices]
    if slices and all(p is not None and len(p) == 3 and o is not None and len(o) == 6 for p, o in geometry):
        normals = [_normal(o) for _, o in geometry]  # type: ignore[arg-type]
        first = normals[0]
        if all(math.isclose(a, b, abs_tol=1e-4) for n in normals for a, b in zip(n, first)) and any(first):
            def along(i: int) -> float:
                position = geometry[i][0]
                return sum(float(p) * n for p, n in zip(position, first))  # type: ignore[union-attr]

            return sorted(indices, key=lambda i: (along(i), by_number(i)))
    return sorted(indices, key=by_number)
