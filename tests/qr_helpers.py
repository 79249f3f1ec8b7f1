"""Build C-FIND/C-GET identifiers the way the SCP receives them: as bytes decoded by
pynetdicom, so values a VR cannot hold (IS "*", a bad date) arrive exactly as a
sloppy viewer would send them."""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode

_LONG_LENGTH = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"}


def _element(tag: int, vr: str, value: object, codec: str) -> bytes:
    if vr == "SQ":
        body = b""
    elif vr in ("US", "SS"):
        body = b"" if value in (None, "") else struct.pack("<H", int(value))  # type: ignore[call-overload]
    else:
        text = "\\".join(value) if isinstance(value, (list, tuple)) else str(value or "")
        body = text.encode(codec)
        if len(body) % 2:
            body += b"\x00" if vr == "UI" else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in _LONG_LENGTH:
        return head + b"\x00\x00" + struct.pack("<I", len(body)) + body
    return head + struct.pack("<H", len(body)) + body


def ident(level: str | None, charset: str | None = None, **keys: object) -> Dataset:
    """An identifier as decoded from the wire (Explicit VR Little Endian)."""
    items: list[tuple[int, str, object]] = []
    if charset is not None:
        items.append((0x00080005, "CS", charset))
    if level is not None:
        items.append((0x00080052, "CS", level))
    for keyword, value in keys.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        items.append((tag, dictionary_VR(tag), value))
    codec = convert_encodings(charset)[0]
    raw = b"".join(_element(t, vr, v, codec)
                   for t, vr, v in sorted(items, key=lambda i: i[0]))
    return decode(BytesIO(raw), False, True)
