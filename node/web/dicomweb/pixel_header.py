"""Where a stored instance's pixel data starts and how it is described, from the bytes of
its Part-10 header, without pydicom (PS3.10 7.1, PS3.5 7.1 and 7.5).

Why not pydicom: parsing a whole stored CT slice with ``dcmread`` costs about 1 ms here,
more than windowing and encoding the frame; rendering needs a dozen group-0028 values
and the pixel data's offset. This walks the top-level elements once, skipping values
(sequences by their length or, undefined, by their items), keeps only those values, and
stops at the pixel data element. Only the uncompressed little-endian transfer syntaxes
(implicit and explicit VR) with grey (MONOCHROME1/2, 8 or 16 bits) or 8-bit RGB pixels
are described; anything else raises ``NotNative`` and the caller uses pydicom.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .fast_json import ITEM, ITEM_END, LONG_VRS, PIXEL_DATA, SEQ_END, UNDEFINED

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
_US = {0x00280002: "samples", 0x00280006: "planar", 0x00280010: "rows",
       0x00280011: "columns", 0x00280100: "bits_allocated", 0x00280101: "bits_stored",
       0x00280103: "pixel_representation"}
_TEXT = {0x00280004: "photometric", 0x00280008: "frames", 0x00281050: "window_center",
         0x00281051: "window_width", 0x00281052: "intercept", 0x00281053: "slope"}
_MAX_DEPTH = 32


class NotNative(ValueError):
    """This instance needs the general (pydicom) path."""


class Truncated(ValueError):
    """The bytes end before the pixel data element: read more of the file."""


@dataclass(frozen=True)
class PixelHeader:
    rows: int
    columns: int
    samples: int
    photometric: str
    planar: int
    frames: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    slope: float | None
    intercept: float | None
    window_center: float | None
    window_width: float | None
    offset: int                 # of the pixel data value, from the start of the file
    length: int                 # of the pixel data value

    @property
    def frame_size(self) -> int:
        return self.rows * self.columns * self.samples * self.bits_allocated // 8

    def frame_offset(self, number: int) -> int:
        """Where the 1-based frame ``number`` starts in the file."""
        return self.offset + (number - 1) * self.frame_size


def _first_number(raw: bytes) -> float | None:
    text = raw.decode("latin-1").split("\\")[0].strip(" \x00")
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise NotNative("a number that does not read as one") from None


class _Walker:
    def __init__(self, data: bytes | memoryview, explicit: bool) -> None:
        self.data = memoryview(data)
        self.explicit = explicit

    def head(self, pos: int) -> tuple[int, int, int, bytes]:
        """(tag, value length, value position, VR or b"") of the element at ``pos``."""
        d = self.data
        if pos + 8 > len(d):
            raise Truncated("the header goes on")
        group, elem = struct.unpack_from("<HH", d, pos)
        tag = (group << 16) | elem
        if group == 0xFFFE or not self.explicit:
            return tag, struct.unpack_from("<I", d, pos + 4)[0], pos + 8, b""
        vr = bytes(d[pos + 4:pos + 6])
        if vr in LONG_VRS:
            if pos + 12 > len(d):
                raise Truncated("the header goes on")
            return tag, struct.unpack_from("<I", d, pos + 8)[0], pos + 12, vr
        if not vr.isalpha():
            raise NotNative("an element without a VR in explicit VR data")
        return tag, struct.unpack_from("<H", d, pos + 6)[0], pos + 8, vr

    def skip_undefined(self, pos: int, depth: int) -> int:
        """Past a value of undefined length (a sequence) that starts at ``pos``."""
        if depth > _MAX_DEPTH:
            raise NotNative("sequences nested too deep")
        while True:
            tag, length, pos, _vr = self.head(pos)
            if tag == SEQ_END:
                return pos
            if tag != ITEM:
                raise NotNative("a malformed sequence")
            if length != UNDEFINED:
                pos += length
                continue
            while True:                      # an item of undefined length: its elements
                tag, length, pos, vr = self.head(pos)
                if tag == ITEM_END:
                    break
                if length == UNDEFINED:
                    if vr == b"UN":
                        raise NotNative("a UN value of undefined length")
                    pos = self.skip_undefined(pos, depth + 1)
                else:
                    pos += length

    def value(self, pos: int, length: int) -> bytes:
        if pos + length > len(self.data):
            raise Truncated("the header goes on")
        return bytes(self.data[pos:pos + length])


def _transfer_syntax(d: memoryview) -> tuple[str, int]:
    """The transfer syntax UID and where the dataset starts, from the file meta group."""
    if len(d) < 132:
        raise Truncated("shorter than the Part-10 preamble")
    if bytes(d[128:132]) != b"DICM":
        raise NotNative("no Part-10 preamble")
    meta = _Walker(d, explicit=True)
    pos, ts = 132, ""
    while True:
        if pos + 8 > len(d):
            raise Truncated("the file meta goes on")
        if struct.unpack_from("<H", d, pos)[0] != 0x0002:
            return ts, pos
        tag, length, value_pos, _vr = meta.head(pos)
        if length == UNDEFINED:
            raise NotNative("an undefined length in the file meta")
        if tag == 0x00020010:
            ts = meta.value(value_pos, length).decode("latin-1").strip(" \x00")
        pos = value_pos + length


def read_pixel_header(data: bytes | memoryview) -> PixelHeader:
    """The pixel description of the Part-10 bytes ``data`` (the file or its head).
    Raises NotNative (use pydicom) or Truncated (give more of the file)."""
    d = memoryview(data)
    ts, pos = _transfer_syntax(d)
    if ts not in (IMPLICIT_LE, EXPLICIT_LE):
        raise NotNative("not an uncompressed little-endian transfer syntax")
    walker = _Walker(d, explicit=ts == EXPLICIT_LE)
    found: dict[str, object] = {}
    while True:
        tag, length, pos, vr = walker.head(pos)
        if tag == PIXEL_DATA:
            if length == UNDEFINED:
                raise NotNative("encapsulated pixel data in an uncompressed transfer syntax")
            return _described(found, pos, length)
        if tag > PIXEL_DATA:
            raise NotNative("no pixel data")
        if length == UNDEFINED:
            if vr == b"UN":
                raise NotNative("a UN value of undefined length")
            pos = walker.skip_undefined(pos, 0)
            continue
        if tag in _US:
            raw = walker.value(pos, length)
            if len(raw) < 2:
                raise NotNative("an empty pixel description value")
            found[_US[tag]] = struct.unpack_from("<H", raw)[0]
        elif tag in _TEXT:
            found[_TEXT[tag]] = walker.value(pos, length)
        pos += length


def _described(found: dict[str, object], offset: int, length: int) -> PixelHeader:
    def text(name: str) -> bytes:
        value = found.get(name, b"")
        assert isinstance(value, bytes)
        return value

    try:
        rows, columns = int(found["rows"]), int(found["columns"])  # type: ignore[call-overload]
        bits = int(found["bits_allocated"])                        # type: ignore[call-overload]
    except KeyError:
        raise NotNative("the pixel description is incomplete") from None
    samples = int(found.get("samples", 1))                         # type: ignore[call-overload]
    stored = int(found.get("bits_stored", bits))                   # type: ignore[call-overload]
    photometric = text("photometric").decode("latin-1").strip(" \x00")
    frames = _first_number(text("frames"))
    header = PixelHeader(
        rows=rows, columns=columns, samples=samples, photometric=photometric,
        planar=int(found.get("planar", 0)),                        # type: ignore[call-overload]
        frames=max(1, int(frames)) if frames is not None else 1,
        bits_allocated=bits, bits_stored=stored,
        signed=found.get("pixel_representation", 0) == 1,
        slope=_first_number(text("slope")), intercept=_first_number(text("intercept")),
        window_center=_first_number(text("window_center")),
        window_width=_first_number(text("window_width")),
        offset=offset, length=length)
    grey = samples == 1 and photometric in ("MONOCHROME1", "MONOCHROME2") and bits in (8, 16)
    rgb = samples == 3 and photometric == "RGB" and bits == 8 and not header.signed
    if not (grey or rgb) or not 1 <= stored <= bits or rows < 1 or columns < 1:
        raise NotNative("a pixel layout this path does not render")
    if header.frames * header.frame_size > length:
        raise NotNative("the pixel data is shorter than its frames")
    return header
