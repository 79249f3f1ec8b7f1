"""Checks an incoming instance must pass before it is stored (pure, no I/O).

A failure carries the DICOM status to answer with and a short reason (it goes into
the response's ErrorComment, at most 64 characters, and never quotes PHI values).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID

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


def _positive_int(ds: Dataset, keyword: str) -> int:
    value = ds.get(keyword)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInstance(status.PIXEL_DATA_INVALID, f"{keyword} missing or not a number")
    if number <= 0:
        raise InvalidInstance(status.PIXEL_DATA_INVALID, f"{keyword} must be positive")
    return number


def expected_pixel_bytes(ds: Dataset) -> int:
    rows = _positive_int(ds, "Rows")
    cols = _positive_int(ds, "Columns")
    bits = _positive_int(ds, "BitsAllocated")
    samples = int(ds.get("SamplesPerPixel") or 1)
    frames_raw = ds.get("NumberOfFrames") or 1
    try:
        frames = int(frames_raw)
    except (TypeError, ValueError):
        raise InvalidInstance(status.PIXEL_DATA_INVALID, "NumberOfFrames not a number")
    if bits not in (1, 8, 16, 32, 64):
        raise InvalidInstance(status.PIXEL_DATA_INVALID, f"BitsAllocated {bits} unsupported")
    total_bits = rows * cols * samples * max(frames, 1) * bits
    return (total_bits + 7) // 8


def check_pixel_data(ds: Dataset, transfer_syntax: UID) -> None:
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
    expected = expected_pixel_bytes(ds)
    if length < expected or length > expected + 1:
        raise InvalidInstance(
            status.PIXEL_DATA_INVALID,
            f"Pixel Data {length} bytes, Rows x Columns x Bits = {expected}"[:64])


def validate_instance(ds: Dataset, *, context_sop_class: str, affected_sop_instance: str,
                      transfer_syntax: UID) -> tuple[str, str, str, str]:
    """Return (sop_class, sop_instance, study_uid, series_uid) or raise InvalidInstance."""
    if any(tag >> 16 in (0x0000, 0x0002) for tag in ds.keys()):
        raise InvalidInstance(status.DATASET_MISMATCH,
                              "dataset holds command or file meta elements")
    sop_class = _uid(ds, "SOPClassUID")
    sop_instance = _uid(ds, "SOPInstanceUID")
    study = _uid(ds, "StudyInstanceUID")
    series = _uid(ds, "SeriesInstanceUID")
    if sop_class != context_sop_class:
        raise InvalidInstance(status.DATASET_MISMATCH,
                              "SOP Class UID differs from the negotiated context")
    if affected_sop_instance and sop_instance != affected_sop_instance.strip():
        raise InvalidInstance(status.DATASET_MISMATCH,
                              "SOP Instance UID differs from the C-STORE request")
    try:
        check_pixel_data(ds, transfer_syntax)
    except InvalidInstance:
        raise
    except Exception as exc:  # a malformed element deep in the dataset
        raise InvalidInstance(status.CANNOT_PARSE, "dataset cannot be parsed") from exc
    return sop_class, sop_instance, study, series
