"""One frame of an uncompressed stored instance as an array of stored values, read at its
offset in the file (or cut from the bytes of a remote instance held in memory).

The file's head (64 KB, more when the header is longer) is described by
``pixel_header``; then only the frame's bytes are read. Values come out as pydicom's
``pixel_array`` gives them: the unused high bits of Bits Allocated masked off (unsigned)
or sign-extended from Bits Stored (signed, PS3.5 8.1.1), RGB as rows x columns x 3
whatever the planar configuration.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import NotFound
from .instances import InstanceView
from .pixel_header import NotNative, PixelHeader, Truncated, read_pixel_header

HEAD_BYTES = 64 << 10


def _header_of(data: bytes | memoryview, whole: bool) -> PixelHeader | None:
    try:
        return read_pixel_header(data)
    except Truncated:
        if whole:
            raise NotNative("the file ends inside its header") from None
        return None


def _frame_bytes(view: InstanceView, number: int) -> tuple[PixelHeader, bytes | memoryview]:
    if view.data is not None:
        header = _header_of(view.data, whole=True)
        assert header is not None
        _check(header, number)
        start = header.frame_offset(number)
        return header, memoryview(view.data)[start:start + header.frame_size]
    assert view.path is not None
    with open(view.path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
        header = _header_of(head, whole=len(head) < HEAD_BYTES)
        if header is None:                      # a long header: read up to the pixels
            head = head + fh.read()
            header = _header_of(head, whole=True)
            assert header is not None
        _check(header, number)
        start, size = header.frame_offset(number), header.frame_size
        if start + size <= len(head):
            return header, memoryview(head)[start:start + size]
        data = os.pread(fh.fileno(), size, start)
    if len(data) != size:
        raise NotNative("the file is shorter than its pixel data")
    return header, data


def _check(header: PixelHeader, number: int) -> None:
    if not 1 <= number <= header.frames:
        raise NotFound(f"frame {number} does not exist (the instance has {header.frames})")


def native_frame(view: InstanceView, number: int) -> tuple[PixelHeader, np.ndarray]:
    """Frame ``number`` (1-based) as stored values (blocking). Raises NotNative when the
    instance needs pydicom, NotFound for a frame it does not have."""
    header, raw = _frame_bytes(view, number)
    kind = "i" if header.signed else "u"
    dtype = np.dtype(f"<{kind}{header.bits_allocated // 8}")
    values = np.frombuffer(raw, dtype=dtype)
    shift = header.bits_allocated - header.bits_stored
    if shift:
        values = np.left_shift(values, shift)
        np.right_shift(values, shift, out=values)
    if header.samples == 1:
        return header, values.reshape(header.rows, header.columns)
    if header.planar == 1:
        planes = values.reshape(header.samples, header.rows, header.columns)
        return header, np.ascontiguousarray(planes.transpose(1, 2, 0))
    return header, values.reshape(header.rows, header.columns, header.samples)
