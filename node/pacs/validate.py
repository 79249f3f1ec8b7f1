"""Checks an incoming instance must pass before it is stored (pure, no I/O).

A failure carries the DICOM status to answer with and a short reason (it goes into
the response's ErrorComment, at most 64 characters, and never quotes PHI values).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..store.dataset_memo import DatasetMemo
from . import status


@dataclass
class InvalidInstance(Exception):
    status: int
    reason: str

    def __str__(self) -> str:
        return f"0x{self.status:04X}: {self.reason}"


def _uid(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception as exc:  # malformed element value
        raise InvalidInstance(status.CANNOT_PARSE, f"{keyword} unreadable") from exc
    if value in (None, ""):
        raise InvalidInstance(status.ELEMENT_MISSING, f"{keyword} missing")
    text = str(value).strip().rstrip("\x00")
    if not UID(text).is_valid:
        raise InvalidInstance(status.DATASET_MISMATCH, f"{keyword} is not a valid UID")
    return text


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return int(tag)


def _uid_memo(keyword: str) -> DatasetMemo[str]:
    return DatasetMemo([_tag(keyword)], lambda ds: _uid(ds, keyword))


def _positive_int(ds: Dataset, keyword: str) -> int:
    value = ds.get(keyword)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInstance(status.PIXEL_DATA_INVALID, f"{keyword} missing or not a number")
    if number <= 0:
        raise InvalidInstance(status.PIXEL_DATA_INVALID, f"{keyword} must be positive")
    return number


# Photometric interpretation -> (samples per pixel it requires, stored values per pixel
# in an uncompressed frame) (PS3.3 C.7.6.3.1.2). 4:2:2 keeps one Cb and one Cr for every
# two pixels (Y Y Cb Cr): two values per pixel; 4:2:0 one Cb and one Cr per 2 x 2 block.
PHOTOMETRIC: dict[str, tuple[int, float]] = {
    "MONOCHROME1": (1, 1), "MONOCHROME2": (1, 1), "PALETTE COLOR": (1, 1),
    "RGB": (3, 3), "YBR_FULL": (3, 3), "HSV": (3, 3),
    "YBR_FULL_422": (3, 2), "YBR_PARTIAL_422": (3, 2), "YBR_PARTIAL_420": (3, 1.5),
    "YBR_ICT": (3, 3), "YBR_RCT": (3, 3), "XYB": (3, 3),
    "ARGB": (4, 4), "CMYK": (4, 4),
}
SUBSAMPLED = {"YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420"}
# Float / Double Float Pixel Data (PS3.3 C.7.6.24): one sample, 32 or 64 bits.
FLOAT_PIXELS = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}


def _frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        raise InvalidInstance(status.PIXEL_DATA_INVALID, "NumberOfFrames not a number")


def values_per_pixel(ds: Dataset) -> float:
    """Stored values per pixel of an uncompressed frame; checks that SamplesPerPixel
    is what the photometric interpretation requires."""
    samples = int(ds.get("SamplesPerPixel") or 1)
    interpretation = str(ds.get("PhotometricInterpretation") or "").strip()
    known = PHOTOMETRIC.get(interpretation)
    if known is None:
        return float(samples)  # absent or unknown: trust SamplesPerPixel
    required, values = known
    if samples != required:
        raise InvalidInstance(status.PIXEL_DATA_INVALID,
                              f"{interpretation} needs SamplesPerPixel {required}"[:64])
    return values


def expected_pixel_bytes(ds: Dataset) -> int:
    """Bytes of uncompressed Pixel Data (before the pad byte to an even length)."""
    rows = _positive_int(ds, "Rows")
    cols = _positive_int(ds, "Columns")
    bits = _positive_int(ds, "BitsAllocated")
    if bits not in (1, 8, 16, 32, 64):
        raise InvalidInstance(status.PIXEL_DATA_INVALID, f"BitsAllocated {bits} unsupported")
    values = values_per_pixel(ds)
    interpretation = str(ds.get("PhotometricInterpretation") or "").strip()
    if interpretation in SUBSAMPLED and cols % 2:
        raise InvalidInstance(status.PIXEL_DATA_INVALID,
                              f"{interpretation} needs an even number of Columns")
    if interpretation == "YBR_PARTIAL_420" and rows % 2:
        raise InvalidInstance(status.PIXEL_DATA_INVALID,
                              "YBR_PARTIAL_420 needs an even number of Rows")
    # 1-bit frames are packed back to back, not padded per frame (PS3.5 8.1.1).
    total_bits = int(rows * cols * values) * _frames(ds) * bits
    return (total_bits + 7) // 8


_GEOMETRY = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel",
             "PhotometricInterpretation", "NumberOfFrames")


@dataclass
class ValidationMemo:
    """The checks whose inputs every instance of a series repeats (its SOP class, study
    and series UIDs, its pixel geometry), remembered by those elements' raw bytes
    (dataset_memo.py). One per ingestor."""

    uids: dict[str, DatasetMemo[str]] = field(default_factory=lambda: {
        k: _uid_memo(k) for k in ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")})
    pixel_bytes: DatasetMemo[int] = field(default_factory=lambda: DatasetMemo(
        [_tag(k) for k in _GEOMETRY], expected_pixel_bytes))


def _check_length(length: int, expected: int, what: str) -> None:
    if length < expected or length > expected + 1:
        raise InvalidInstance(status.PIXEL_DATA_INVALID,
                              f"{what} {length} bytes, expected {expected}"[:64])


def check_pixel_data(ds: Dataset, transfer_syntax: UID,
                     memo: ValidationMemo | None = None) -> None:
    for keyword, bits in FLOAT_PIXELS.items():
        if keyword in ds:
            value = ds[keyword].value
            rows, cols = _positive_int(ds, "Rows"), _positive_int(ds, "Columns")
            _check_length(len(value or b""), rows * cols * _frames(ds) * bits // 8, keyword)
    if "PixelData" not in ds:
        return
    elem = ds["PixelData"]
    value = elem.value
    length = len(value) if value is not None else 0
    if length == 0:
        raise InvalidInstance(status.PIXEL_DATA_INVALID, "Pixel Data is empty")
    if transfer_syntax.is_encapsulated:
        if not bytes(value[:4]) == b"\xfe\xff\x00\xe0":
            raise InvalidInstance(status.PIXEL_DATA_INVALID,
                                  "compressed Pixel Data is not encapsulated")
        return
    expected = memo.pixel_bytes(ds) if memo is not None else expected_pixel_bytes(ds)
    _check_length(length, expected, "Pixel Data")


def validate_instance(ds: Dataset, *, context_sop_class: str, affected_sop_instance: str,
                      transfer_syntax: UID, memo: ValidationMemo | None = None
                      ) -> tuple[str, str, str, str]:
    """Return (sop_class, sop_instance, study_uid, series_uid) or raise InvalidInstance.
    ``memo``: remembered results for the elements a series repeats (same outcome)."""

    def uid(keyword: str) -> str:
        return memo.uids[keyword](ds) if memo is not None else _uid(ds, keyword)

    if any(tag >> 16 in (0x0000, 0x0002) for tag in ds.keys()):
        raise InvalidInstance(status.DATASET_MISMATCH,
                              "dataset holds command or file meta elements")
    sop_class = uid("SOPClassUID")
    sop_instance = _uid(ds, "SOPInstanceUID")
    study = uid("StudyInstanceUID")
    series = uid("SeriesInstanceUID")
    if sop_class != context_sop_class:
        raise InvalidInstance(status.DATASET_MISMATCH,
                              "SOP Class UID differs from the negotiated context")
    if affected_sop_instance and sop_instance != affected_sop_instance.strip():
        raise InvalidInstance(status.DATASET_MISMATCH,
                              "SOP Instance UID differs from the C-STORE request")
    try:
        check_pixel_data(ds, transfer_syntax, memo)
    except InvalidInstance:
        raise
    except Exception as exc:  # a malformed element deep in the dataset
        raise InvalidInstance(status.CANNOT_PARSE, "dataset cannot be parsed") from exc
    return sop_class, sop_instance, study, series
