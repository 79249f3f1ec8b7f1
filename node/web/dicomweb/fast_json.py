"""The header of an Explicit VR Little Endian Part-10 file straight to DICOM JSON.

Why not pydicom: converting a stored instance through pydicom's Dataset and its JSON
writer costs ~8 ms per instance here (value conversion and validation of every element),
so a 300-slice series' metadata would take longer than Orthanc's. This reads the
elements once, in order, converting each VR as PS3.18 F.2 says; anything it does not
handle (other transfer syntaxes, character sets beyond ASCII / Latin-1 / UTF-8,
undefined-length values other than sequences) raises ``NotFast`` and the caller uses
pydicom instead. Tests check it against pydicom's ``to_json_dict``.
"""

from __future__ import annotations

import base64
import struct
from typing import Any, Callable

EXPLICIT_LE = {"1.2.840.10008.1.2.1"}
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_TEXT_SINGLE = {"LT", "ST", "UT", "UR"}
_NUMBERS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d",
            "UV": "Q", "SV": "q"}
_CHARSETS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1",
             "ISO_IR 192": "utf-8"}
UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

Bulk = Callable[[int, str], str]   # (tag, vr) -> BulkDataURI for a large top-level value


class NotFast(ValueError):
    """This file needs the general (pydicom) path."""


def _number_text(text: str, vr: str) -> int | float:
    text = text.strip()
    if vr == "IS":
        return int(text)
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() \
        else value


def _value(vr: str, raw: bytes, encoding: str) -> list[Any] | None:
    if not raw:
        return None
    if vr in _NUMBERS:
        fmt = _NUMBERS[vr]
        return list(struct.unpack(f"<{len(raw) // struct.calcsize(fmt)}{fmt}", raw))
    if vr == "AT":
        pairs = struct.unpack(f"<{len(raw) // 2}H", raw)
        return [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)]
    text = raw.decode(encoding if vr in ("PN", "SH", "LO", "ST", "LT", "UC", "UT") else "latin-1")
    if vr in _TEXT_SINGLE:
        text = text.rstrip(" \x00")
        return [text] if text else None
    text = text.rstrip(" \x00")
    if not text:
        return None
    parts = [p.strip(" \x00") if vr != "UI" else p.strip("\x00 ") for p in text.split("\\")]
    if vr in ("IS", "DS"):
        return [_number_text(p, vr) if p else None for p in parts]
    if vr == "PN":
        out: list[Any] = []
        for p in parts:
            groups = p.split("=")
            names = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), groups))
            out.append({k: v for k, v in names.items() if v} if p else None)
        return out
    return [p if p else None for p in parts]


class _Reader:
    def __init__(self, data: bytes | memoryview, bulk: Bulk, threshold: int) -> None:
        self.data = memoryview(data)
        self.bulk = bulk
        self.threshold = threshold
        self.encoding = "latin-1"
        self.pixel_vr = ""

    def element_head(self, pos: int) -> tuple[int, str, int, int]:
        d = self.data
        group, elem = struct.unpack_from("<HH", d, pos)
        tag = (group << 16) | elem
        if group == 0xFFFE:
            (length,) = struct.unpack_from("<I", d, pos + 4)
            return tag, "", length, pos + 8
        vr = bytes(d[pos + 4:pos + 6])
        if vr in LONG_VRS:
            (length,) = struct.unpack_from("<I", d, pos + 8)
            return tag, vr.decode(), length, pos + 12
        if not vr.isalpha():
            raise NotFast("not explicit VR")
        (length,) = struct.unpack_from("<H", d, pos + 6)
        return tag, vr.decode(), length, pos + 8

    def dataset(self, pos: int, end: int, *, top: bool) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        size = len(self.data)
        while pos < end and pos + 8 <= size:
            tag, vr, length, pos = self.element_head(pos)
            if tag == ITEM_END:
                return out, pos
            if top and tag == PIXEL_DATA:
                self.pixel_vr = vr
                return out, pos
            if vr == "SQ":
                items, pos = self.sequence(pos, length)
                out[f"{tag:08X}"] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
                continue
            if length == UNDEFINED:
                raise NotFast("undefined length value")
            raw = bytes(self.data[pos:pos + length])
            if len(raw) != length:
                raise NotFast("truncated element")
            pos += length
            if top and (tag & 0xFFFF == 0 or tag >> 16 == 0x0002):
                continue          # group lengths and file meta are not metadata
            if tag == 0x00080005:
                charset = raw.decode("latin-1").strip(" \x00")
                if charset not in _CHARSETS:
                    raise NotFast("character set")
                self.encoding = _CHARSETS[charset]
            key = f"{tag:08X}"
            if vr in _BINARY_VRS:
                if top and length > self.threshold:
                    out[key] = {"vr": vr, "BulkDataURI": self.bulk(tag, vr)}
                elif raw:
                    out[key] = {"vr": vr, "InlineBinary": base64.b64encode(raw).decode()}
                else:
                    out[key] = {"vr": vr}
                continue
            values = _value(vr, raw, self.encoding)
            out[key] = {"vr": vr, "Value": values} if values else {"vr": vr}
        return out, pos

    def sequence(self, pos: int, length: int) -> tuple[list[dict[str, Any]], int]:
        end = len(self.data) if length == UNDEFINED else pos + length
        items: list[dict[str, Any]] = []
        while pos < end:
            tag, _vr, item_len, pos = self.element_head(pos)
            if tag == SEQ_END:
                return items, pos
            if tag != ITEM:
                raise NotFast("malformed sequence")
            item_end = len(self.data) if item_len == UNDEFINED else pos + item_len
            item, pos = self.dataset(pos, item_end, top=False)
            items.append(item)
        return items, pos


def header_json(data: bytes | memoryview, bulk: Bulk, *,
                threshold: int = 1024) -> tuple[dict[str, Any], str]:
    """(metadata of the dataset, VR of its pixel data or "") from Part-10 bytes that
    reach at least the pixel data element. Raises NotFast."""
    d = memoryview(data)
    if bytes(d[128:132]) != b"DICM":
        raise NotFast("no Part-10 preamble")
    group, elem, vr = struct.unpack_from("<HH2s", d, 132)
    if (group, elem, vr) != (2, 0, b"UL"):
        raise NotFast("no file meta group length")
    (meta_len,) = struct.unpack_from("<I", d, 140)
    start = 144 + meta_len
    reader = _Reader(d, bulk, threshold)
    meta, _ = reader.dataset(132, start, top=False)
    ts = (meta.get("00020010", {}).get("Value") or [""])[0]
    if not explicit_little_endian(ts):
        raise NotFast("transfer syntax")
    out, _pos = reader.dataset(start, len(d), top=True)
    return out, reader.pixel_vr


def explicit_little_endian(ts: str) -> bool:
    """Explicit VR LE, and the compressed syntaxes (their dataset is encoded that way)."""
    return ts in EXPLICIT_LE or ts.startswith("1.2.840.10008.1.2.4.") \
        or ts == "1.2.840.10008.1.2.5"
