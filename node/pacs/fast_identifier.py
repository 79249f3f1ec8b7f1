"""A strict, small reader for the common C-FIND identifier (pure).

A C-FIND identifier is usually a handful of short text keys (level, PatientID, a few
empty return keys). pydicom's reader + element conversion cost more per query than the
rest of the query; this reads such an identifier straight from its bytes into the key
terms the matcher wants (``element_terms``/``element_vr`` of ``node.pacs.identifier``).

It accepts only what it reads exactly as pydicom would (tests compare both): Implicit
or Explicit VR Little Endian, ascending non-private standard tags with a single text VR
from the dictionary (sent VR equal to it) or an empty IS / DS return key, printable
ASCII values, a default-compatible character set. Anything else (sequences, binary VRs,
numbers with a value, other character sets, odd encodings) gives None: the caller
decodes with pydicom as before.
"""

from __future__ import annotations

from typing import Iterator

from pydicom.datadict import dictionary_VR

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
_CHARSET = 0x00080005
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "LO", "SH", "PN", "UI"})
# numbers, read only as empty return keys (NumberOfStudyRelatedInstances, SeriesNumber:
# findscu's and most viewers' study queries ask for one; a value falls back to pydicom)
_EMPTY_ONLY_VRS = frozenset({"IS", "DS"})
_CHARSETS = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"})
_PRINTABLE = bytes(range(0x20, 0x7F))
_MAX_ELEMENTS = 64
_vr_cache: dict[int, str | None] = {}


class FastIdentifier:
    """The keys of an identifier read by :func:`parse`: tag -> (VR, terms)."""

    __slots__ = ("elements",)

    def __init__(self, elements: dict[int, tuple[str, list[str]]]) -> None:
        self.elements = elements

    def keys(self) -> Iterator[int]:
        return iter(self.elements)

    def vr(self, tag: int) -> str:
        return self.elements[tag][0]

    def terms(self, tag: int) -> list[str]:
        item = self.elements.get(tag)
        return list(item[1]) if item is not None else []


def _text_vr(tag: int) -> str | None:
    try:
        return _vr_cache[tag]
    except KeyError:
        pass
    try:
        vr: str | None = dictionary_VR(tag)
    except KeyError:
        vr = None
    if vr not in _TEXT_VRS and vr not in _EMPTY_ONLY_VRS:
        vr = None
    if len(_vr_cache) < 4096:
        _vr_cache[tag] = vr
    return vr


def _terms(raw: bytes) -> list[str]:
    text = raw.decode("ascii").strip()
    if not text:
        return []
    return [t.strip() for t in text.split("\\")]


def parse(data: bytes, ts: str) -> FastIdentifier | None:
    """The identifier's keys, or None when it is not the simple kind (use pydicom)."""
    if ts == IMPLICIT_LE:
        implicit = True
    elif ts == EXPLICIT_LE:
        implicit = False
    else:
        return None
    elements: dict[int, tuple[str, list[str]]] = {}
    pos, end, last = 0, len(data), -1
    while pos < end:
        if pos + 8 > end or len(elements) >= _MAX_ELEMENTS:
            return None
        group = data[pos] | data[pos + 1] << 8
        tag = group << 16 | data[pos + 2] | data[pos + 3] << 8
        if tag <= last or group & 1 or group == 0x0002 or not tag & 0xFFFF:
            return None
        vr = _text_vr(tag)
        if vr is None:
            return None
        if implicit:
            length = int.from_bytes(data[pos + 4:pos + 8], "little")
            pos += 8
        else:
            if data[pos + 4:pos + 6] != vr.encode():
                return None
            length = data[pos + 6] | data[pos + 7] << 8
            pos += 8
        if pos + length > end:
            return None
        if length and vr in _EMPTY_ONLY_VRS:
            return None
        raw = data[pos:pos + length]
        pos += length
        if vr == "UI" and raw.endswith(b"\x00"):  # a UID's padding
            raw = raw[:-1]
        if raw.translate(None, _PRINTABLE):
            return None
        elements[tag] = (vr, _terms(raw))
        last = tag
    charset = elements.get(_CHARSET)
    if charset is not None and any(t not in _CHARSETS for t in charset[1]):
        return None
    return FastIdentifier(elements)
