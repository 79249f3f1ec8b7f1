"""Frames and bulk data cut out of a stored Part-10 instance, without re-encoding.

Uncompressed pixel data is split by the frame size (Rows x Columns x SamplesPerPixel x
BitsAllocated / 8); encapsulated (compressed) pixel data by its fragments, as stored.
"""

from __future__ import annotations

import io
import warnings

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.tag import Tag
from pydicom.uid import UID

from .errors import NotFound, Unsupported

PIXEL_DATA = 0x7FE00010


def parse(data: bytes, *, pixels: bool = True) -> Dataset:
    with warnings.catch_warnings():   # pydicom warnings can quote values (PHI)
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)


def frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def frames_of(ds: Dataset, numbers: list[int]) -> list[bytes]:
    """The 1-based ``numbers`` frames of ``ds``'s pixel data, as stored."""
    if "PixelData" not in ds:
        raise NotFound("this instance has no pixel data")
    total = frame_count(ds)
    bad = [n for n in numbers if not 1 <= n <= total]
    if bad:
        raise NotFound(f"frame {bad[0]} does not exist (the instance has {total})")
    pixels: bytes = ds.PixelData
    if UID(ds.file_meta.TransferSyntaxUID).is_compressed:
        frames = list(generate_frames(pixels, number_of_frames=total))
        return [frames[n - 1] for n in numbers]
    bits = int(ds.BitsAllocated)
    if bits % 8:
        raise Unsupported("frames of 1-bit pixel data are served only as the whole bulk data")
    size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8
    return [pixels[(n - 1) * size:n * size] for n in numbers]


def bulk_of(ds: Dataset, tag_text: str) -> bytes:
    """The value of a top-level binary element named by its 8-hex tag."""
    try:
        tag = Tag(int(tag_text, 16))
    except ValueError:
        raise NotFound("bulk data is named by an 8-digit hex tag") from None
    if len(tag_text) != 8 or tag not in ds:
        raise NotFound("this instance has no such bulk data element")
    value = ds[tag].value
    if not isinstance(value, (bytes, bytearray)):
        raise NotFound("this element is not bulk data")
    return bytes(value)
