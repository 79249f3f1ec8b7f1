"""Reading a request identifier's keys as plain strings (pure).

Identifiers arrive from pynetdicom still raw (bytes). We decode them here rather than
through pydicom's element conversion because that conversion validates, and its
warnings quote the offending value into the log — a patient's name or birth date.
A value its VR cannot hold (IS "*", a 10-digit date) is passed on as text for the
matcher to judge.
"""

from __future__ import annotations

import struct
from typing import Any, Iterator

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from .fast_identifier import FastIdentifier

QR_LEVEL = 0x00080052
CHARSET = 0x00080005
RETRIEVE_AE = 0x00080054
_NOT_KEYS = {QR_LEVEL, CHARSET, RETRIEVE_AE}

_PN_DELIMS = {0x5C, 0x3D, 0x5E}
_TEXT_DELIMS = {0x5C, 0x09, 0x0A, 0x0C, 0x0D}
_CHARSET_VRS = {"SH", "LO", "ST", "LT", "UT", "UC"}
_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i"}


Identifier = Dataset | FastIdentifier


def key_tags(identifier: Identifier) -> Iterator[int]:
    """Tags of the keys to match/return: not the level, character set, retrieve AE,
    group lengths, file meta or private elements."""
    if isinstance(identifier, FastIdentifier):  # holds only standard, non-meta keys
        return (t for t in identifier.keys() if t not in _NOT_KEYS)
    return _dataset_key_tags(identifier)


def _dataset_key_tags(identifier: Dataset) -> Iterator[int]:
    for tag in identifier.keys():
        tag = Tag(tag)
        if tag in _NOT_KEYS or tag.element == 0 or tag.is_private or tag.group == 0x0002:
            continue
        yield int(tag)


def element_vr(identifier: Identifier, tag: int) -> str:
    """The dictionary VR; for unknown tags and ambiguous ones ("US or SS") the VR the
    request carried, else the first choice."""
    if isinstance(identifier, FastIdentifier):
        return identifier.vr(tag)
    sent = getattr(identifier.get_item(tag), "VR", None)
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return str(sent or "UN")
    if " or " in vr:
        return str(sent) if sent and " or " not in str(sent) else vr.split(" or ")[0]
    return vr


def charset_of(identifier: Identifier) -> str | list[str] | None:
    value = element_terms(identifier, CHARSET)
    if not value or not any(value):
        return None
    return value[0] if len(value) == 1 else value


def level_text(identifier: Identifier) -> str:
    terms = element_terms(identifier, QR_LEVEL)
    return terms[0].upper() if terms else ""


def element_terms(identifier: Identifier, tag: int) -> list[str]:
    """The key's value(s), backslash-separated in DICOM, as stripped strings."""
    if isinstance(identifier, FastIdentifier):
        return identifier.terms(tag)
    item = identifier.get_item(tag)
    if item is None:
        return []
    if isinstance(item, RawDataElement):
        return _raw_terms(item, element_vr(identifier, tag), identifier)
    return _terms(item)


def _terms(elem: DataElement) -> list[str]:
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v).strip() for v in value]
    return [t.strip() for t in str(value).split("\\")]


def _raw_terms(item: RawDataElement, vr: str, identifier: Dataset) -> list[str]:
    raw: Any = item.value
    if not raw:
        return []
    if vr in _BINARY:
        fmt = ("<" if item.is_little_endian else ">") + _BINARY[vr]
        size = struct.calcsize(fmt)
        return [str(struct.unpack(fmt, raw[i:i + size])[0])
                for i in range(0, len(raw) - size + 1, size)]
    if vr == "PN" or vr in _CHARSET_VRS:
        names = charset_of(identifier)
        encodings = convert_encodings([names] if isinstance(names, str) else names)
        text = decode_bytes(raw, encodings, _PN_DELIMS if vr == "PN" else _TEXT_DELIMS)
    else:
        text = raw.decode("latin-1")
    return [t.strip(" \x00") for t in text.split("\\")]

