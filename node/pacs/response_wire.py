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
    the response identifier, ``dataset()`` the same identifier as a pydicom Dataset.
    Matches of one query share a ``RowEncoder`` (its per-query template)."""

    __slots__ = ("query", "row", "retrieve_ae", "encoder")

    def __init__(self, query: SqlQuery, row: Any, retrieve_ae: str,
                 encoder: "RowEncoder | None" = None) -> None:
        self.query = query
        self.row = row
        self.retrieve_ae = retrieve_ae
        self.encoder = encoder

    def dataset(self) -> Dataset:
        return response_dataset(self.query, self.row, self.retrieve_ae)

    def encode(self, ts: str) -> bytes:
        if self.encoder is not None:
            raw = self.encoder.encode(self.row, ts)
        else:
            raw = encode_row(self.query, self.row, self.retrieve_ae, ts)
        return raw if raw is not None else codec.encode(self.dataset(), ts)


# (tag [+ VR] bytes, VR, row column, header kind, padding byte of a text VR or b"")
_Item = tuple[bytes, str, int, int, bytes]
_IMPLICIT, _EXPLICIT_SHORT, _EXPLICIT_LONG = 0, 1, 2


class RowEncoder:
    """``encode_row`` for every match of one query, from a template made once per
    transfer syntax: the elements' order, their tag/VR bytes, and the elements that
    are the same in every match (empty keys, sequences, the level, the retrieve AE,
    the requested character set) already encoded. A row with a non-ASCII text, or
    anything else the template does not cover, goes through ``encode_row`` itself,
    so the bytes are always ``encode_row``'s (tests compare them). Why: ~7.6 us per
    match for ``encode_row`` on the benchmark machine (issue 12, per-match cost)."""

    __slots__ = ("query", "retrieve_ae", "_plans")

    def __init__(self, query: SqlQuery, retrieve_ae: str) -> None:
        self.query = query
        self.retrieve_ae = retrieve_ae
        self._plans: dict[str, list[bytes | _Item] | None] = {}

    def encode(self, row: Any, ts: str) -> bytes | None:
        try:
            plan = self._plans[ts]
        except KeyError:
            plan = self._plans[ts] = _template(self.query, self.retrieve_ae, ts)
        if plan is None:
            return encode_row(self.query, row, self.retrieve_ae, ts)
        out = []
        for item in plan:
            if type(item) is bytes:
                out.append(item)
                continue
            prefix, vr, column, kind, pad = item  # type: ignore[misc]
            value = row[column]
            if type(value) is str and pad:   # a text VR: ASCII bytes, padded to even
                if not value.isascii():
                    return encode_row(self.query, row, self.retrieve_ae, ts)
                data = value.encode("ascii")
                if len(data) % 2:
                    data += pad
            else:
                if isinstance(value, str):
                    if not value.isascii():
                        return encode_row(self.query, row, self.retrieve_ae, ts)
                elif value is not None and vr not in _NUMERIC_VRS:
                    value = str(value)
                data = _value_bytes(vr, value, False)   # type: ignore[assignment]
                if data is None:
                    return encode_row(self.query, row, self.retrieve_ae, ts)
            n = len(data)
            if kind == _IMPLICIT:
                out.append(prefix + _U32.pack(n))
            elif kind == _EXPLICIT_LONG:
                out.append(prefix + _LONG_LEN.pack(0, n))
            elif n > 0xFFFF:
                return encode_row(self.query, row, self.retrieve_ae, ts)
            else:
                out.append(prefix + _U16.pack(n))
            out.append(data)
        return b"".join(out)


_U16, _U32, _LONG_LEN = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<HI")


def _explicit_vr(ts: str) -> bool | None:
    """True / False for the two little-endian syntaxes a match is encoded in; None for
    any other (those matches take the Dataset path)."""
    if ts == ExplicitVRLittleEndian:
        return True
    if ts == ImplicitVRLittleEndian:
        return False
    return None


def _template(query: SqlQuery, retrieve_ae: str, ts: str) -> list[bytes | _Item] | None:
    """The template of ``RowEncoder`` (None: every row takes ``encode_row``)."""
    explicit = _explicit_vr(ts)
    if explicit is None:
        return None
    charset = query.charset   # what encode_row answers when every text is ASCII
    fixed: list[tuple[int, str, Any]] = [(QR_LEVEL, "CS", str(query.level)),
                                         (RETRIEVE_AE, "AE", retrieve_ae)]
    if charset is not None:
        fixed.append((CHARSET, "CS", charset if isinstance(charset, str)
                      else "\\".join(charset)))
    entries: list[tuple[int, str, Any, int | None]] = [(t, vr, v, None) for t, vr, v in fixed]
    for key in query.keys:
        if " or " in key.vr:
            return None
        if key.column is None or key.vr == "SQ":
            entries.append((key.tag, key.vr, None, None))
        else:
            entries.append((key.tag, key.vr, None, key.column))
    entries.sort(key=_tag)
    if len({e[0] for e in entries}) != len(entries):
        return None   # a tag twice: leave the order questions to encode_row
    plan: list[bytes | _Item] = []
    for tag, vr, value, column in entries:
        tag_bytes = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        if explicit:
            prefix, kind = tag_bytes + vr.encode(), (_EXPLICIT_LONG if vr in _LONG
                                                     else _EXPLICIT_SHORT)
        else:
            prefix, kind = tag_bytes, _IMPLICIT
        if column is not None:
            text = vr not in _BINARY and vr not in ("IS", "DS")
            plan.append((prefix, vr, column, kind,
                         (b"\0" if vr == "UI" else b" ") if text else b""))
            continue
        data = _value_bytes(vr, value, False)
        if data is None or (kind == _EXPLICIT_SHORT and len(data) > 0xFFFF):
            return None
        header = (_U32.pack(len(data)) if kind == _IMPLICIT else
                  _LONG_LEN.pack(0, len(data)) if kind == _EXPLICIT_LONG else
                  _U16.pack(len(data)))
        plan.append(prefix + header + data)
    # adjacent constants joined: fewer pieces per row
    merged: list[bytes | _Item] = []
    for item in plan:
        if type(item) is bytes and merged and type(merged[-1]) is bytes:
            merged[-1] = merged[-1] + item  # type: ignore[operator]
        else:
            merged.append(item)
    return merged


def encode_row(query: SqlQuery, row: Any, retrieve_ae: str, ts: str) -> bytes | None:
    """The response identifier's bytes in ``ts``, or None when this row needs the
    Dataset path (see the module docstring)."""
    explicit = _explicit_vr(ts)
    if explicit is None:
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
