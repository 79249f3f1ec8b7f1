"""C-FIND response identifiers encoded straight from their database row (pure).

Why: building a pydicom Dataset per match and writing it with pydicom's filewriter
cost about 0.25 ms per match on the 2-core benchmark machine (issue 12; ~85 % of the
node's per-match time), more than the SQL. For the syntaxes C-FIND uses in practice
(Explicit and Implicit VR Little Endian) the bytes are simple: sorted elements, each
a tag, a VR (explicit only), a length and the padded value. Anything out of the
ordinary (a non-ASCII value in a character set other than UTF-8, a DS value, an
ambiguous VR, another transfer syntax) falls back to the Dataset path, so the bytes
are always what ``codec.encode(response_dataset(...))`` writes (tests compare them).
"""

from __future__ import annotations

import struct
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from . import codec
from .identifier import CHARSET, QR_LEVEL, RETRIEVE_AE
from .matching import SqlQuery
from .response import response_charset, response_dataset

_BINARY = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i", "UV": "<Q", "SV": "<q",
           "FL": "<f", "FD": "<d"}
_NUMERIC_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "IS", "DS", "UV", "SV"}
_LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
_TEXT = {"SH", "LO", "ST", "LT", "UT", "UC", "PN"}   # the VRs a character set applies to


class ResponseRow:
    """One C-FIND match as it came from the store: ``encode(ts)`` gives the bytes of
    the response identifier, ``dataset()`` the same identifier as a pydicom Dataset."""

    __slots__ = ("query", "row", "retrieve_ae")

    def __init__(self, query: SqlQuery, row: Any, retrieve_ae: str) -> None:
        self.query = query
        self.row = row
        self.retrieve_ae = retrieve_ae

    def dataset(self) -> Dataset:
        return response_dataset(self.query, self.row, self.retrieve_ae)

    def encode(self, ts: str) -> bytes:
        raw = encode_row(self.query, self.row, self.retrieve_ae, ts)
        return raw if raw is not None else codec.encode(self.dataset(), ts)


def encode_row(query: SqlQuery, row: Any, retrieve_ae: str, ts: str) -> bytes | None:
    """The response identifier's bytes in ``ts``, or None when this row needs the
    Dataset path (see the module docstring)."""
    if ts == ExplicitVRLittleEndian:
        explicit = True
    elif ts == ImplicitVRLittleEndian:
        explicit = False
    else:
        return None
    elements: list[tuple[int, str, Any]] = []
    texts: list[str] = []
    for key in query.keys:
        vr = key.vr
        if " or " in vr:
            return None
        value = None if key.column is None else row[key.column]
        if vr == "SQ":
            value = None
        elif isinstance(value, str):
            texts.append(value)
        elif value is not None and vr not in _NUMERIC_VRS:
            value = str(value)
        elements.append((key.tag, vr, value))
    elements.append((QR_LEVEL, "CS", str(query.level)))
    elements.append((RETRIEVE_AE, "AE", retrieve_ae))
    charset = response_charset(query.charset, texts)
    if charset is not None:
        elements.append((CHARSET, "CS", charset if isinstance(charset, str)
                         else "\\".join(charset)))
    utf8 = charset == "ISO_IR 192"
    out = bytearray()
    for tag, vr, value in sorted(elements, key=_tag):
        data = _value_bytes(vr, value, utf8)
        if data is None:
            return None
        if explicit:
            if vr in _LONG:
                out += struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(data))
            else:
                if len(data) > 0xFFFF:
                    return None
                out += struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(data))
        else:
            out += struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(data))
        out += data
    return bytes(out)


def _tag(element: tuple[int, str, Any]) -> int:
    return element[0]


def _value_bytes(vr: str, value: Any, utf8: bool) -> bytes | None:
    if value is None or value == "":
        return b""
    if vr in _BINARY:
        if type(value) is not int and not (vr in ("FL", "FD") and type(value) is float):
            return None
        try:
            return struct.pack(_BINARY[vr], value)
        except struct.error:
            return b""    # as response_dataset: a value the VR cannot carry is sent empty
    if vr == "IS":
        if type(value) is not int:
            return None
        value = str(value)
    elif vr == "DS" or not isinstance(value, str):
        return None
    if value.isascii():
        data = value.encode("ascii")
    elif utf8 and vr in _TEXT:
        data = value.encode("utf-8")
    else:
        return None
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    return data
