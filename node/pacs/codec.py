"""Data sets to and from the bytes of a presentation context's transfer syntax, and
the stored Part-10 files read as the bytes to send (pure, except for reading files)."""

from __future__ import annotations

import struct
import zlib
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.filewriter import write_dataset
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID)
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID

IMPLEMENTATION_VERSION = "MEDFED_1"
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)


def _flags(ts: str) -> tuple[bool, bool]:
    """(is_implicit_VR, is_little_endian) of a transfer syntax."""
    uid = UID(ts)
    if uid == ImplicitVRLittleEndian:
        return True, True
    return False, uid != ExplicitVRBigEndian


def decode(data: bytes | bytearray | memoryview, ts: str, offset: int = 0) -> Dataset:
    """A data set (no file meta) from its encoded bytes, from ``offset`` on. Raises on
    garbage. ``bytes`` are read in place; other buffers are copied once first."""
    if ts == DeflatedExplicitVRLittleEndian:
        data, offset = zlib.decompress(memoryview(data)[offset:], -zlib.MAX_WBITS), 0
    implicit, little = _flags(ts)
    fp = BytesIO(data)
    fp.seek(offset)
    return read_dataset(fp, implicit, little)


def encode(ds: Dataset, ts: str) -> bytes:
    """The data set in ``ts`` (uncompressed or deflated; encapsulated pixel data is
    written as it is)."""
    buf = DicomBytesIO()
    buf.is_implicit_VR, buf.is_little_endian = _flags(ts)
    write_dataset(buf, ds)
    raw = buf.getvalue()
    if ts == DeflatedExplicitVRLittleEndian:
        packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        raw = packer.compress(raw) + packer.flush()
    return raw


def _meta_element(elem: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def part10_header(sop_class: str, sop_instance: str, ts: str, source_ae: str) -> bytes:
    """Preamble, DICM and file meta for a received instance (PS3.10 7.1), group length
    first. Packed here: pydicom's write_file_meta_info took longer than the rest of
    the per-instance work of the C-STORE path (profiled, issue 15)."""
    body = b"".join([
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", _padded(sop_class, b"\x00")),
        _meta_element(0x0003, b"UI", _padded(sop_instance, b"\x00")),
        _meta_element(0x0010, b"UI", _padded(ts, b"\x00")),
        _meta_element(0x0012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
        _meta_element(0x0013, b"SH", _padded(IMPLEMENTATION_VERSION, b" ")),
        _meta_element(0x0016, b"AE", _padded(source_ae[:16], b" ")) if source_ae else b"",
    ])
    return (b"\x00" * 128 + b"DICM" + _meta_element(0x0000, b"UL", struct.pack("<I", len(body)))
            + body)


def dataset_offset(head: bytes) -> int | None:
    """Where the data set starts in a Part-10 file whose meta group begins with its
    group length (as every file this node writes does); None if it does not."""
    if len(head) < 144 or head[128:132] != b"DICM":
        return None
    tag, vr, length = struct.unpack_from("<I2sH", head, 132)
    if tag != 0x00000002 or vr != b"UL" or length != 4:
        return None
    return 144 + struct.unpack_from("<I", head, 140)[0]


def stored_dataset(path: Path) -> tuple[str, memoryview]:
    """(SOP Instance UID, data set bytes exactly as received) of a stored Part-10 file.
    Raises OSError when unreadable, ValueError when it is not a Part-10 file."""
    with open(path, "rb") as fh:
        data = fh.read()
    start = dataset_offset(data[:256])
    if start is None:  # no group length first (a file from elsewhere): let pydicom say
        with open(path, "rb") as fh:
            read_preamble(fh, False)
            meta = _read_file_meta_info(fh)
            start = fh.tell()
        uid = str(meta.get("MediaStorageSOPInstanceUID", ""))
    else:
        uid = meta_uids(data[:start]).get(0x0003, "")
    if not uid or start > len(data):
        raise ValueError("not a Part-10 file with a SOP Instance UID in its meta header")
    return uid, memoryview(data)[start:]


def meta_uids(head: bytes) -> dict[int, str]:
    """UI values of a Part-10 file's meta group (Explicit VR Little Endian), by element."""
    out: dict[int, str] = {}
    pos = 132
    while pos + 8 <= len(head):
        group, elem, vr = struct.unpack_from("<HH2s", head, pos)
        if group != 2:
            break
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            length = struct.unpack_from("<I", head, pos + 8)[0]
            pos += 12
        else:
            length = struct.unpack_from("<H", head, pos + 6)[0]
            pos += 8
        if vr == b"UI":
            out[elem] = head[pos:pos + length].decode("ascii", "replace").rstrip("\x00 ")
        pos += length
    return out
