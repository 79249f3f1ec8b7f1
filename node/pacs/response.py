"""Database rows → C-FIND response identifiers (pure).

Values come from our own store, so elements are built without pydicom's validation:
it is the costliest step per row, and its warnings would quote a stored value (a
name, a birth date) into the log.
"""

from __future__ import annotations

from typing import Any

from pydicom import config
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from .identifier import CHARSET, QR_LEVEL, RETRIEVE_AE
from .matching import SqlQuery

_NUMERIC_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "IS", "DS", "UV", "SV"}


def response_dataset(query: SqlQuery, row: tuple[Any, ...] | Any, retrieve_ae: str) -> Dataset:
    """One response identifier: every requested key with the node's value or empty,
    plus the level, the unique keys above it and the AE to retrieve from."""
    ds = Dataset()
    texts: list[str] = []
    for key in query.keys:
        value = None if key.column is None else row[key.column]
        if key.vr == "SQ":
            value = []
        elif isinstance(value, str):
            texts.append(value)
        elif value is not None and key.vr not in _NUMERIC_VRS:
            value = str(value)
        ds[key.tag] = _element(key.tag, key.vr, value)
    ds[QR_LEVEL] = _element(QR_LEVEL, "CS", str(query.level))
    ds[RETRIEVE_AE] = _element(RETRIEVE_AE, "AE", retrieve_ae)
    charset = response_charset(query.charset, texts)
    if charset is not None:
        ds[CHARSET] = _element(CHARSET, "CS", charset)
    return ds


def _element(tag: int, vr: str, value: Any) -> DataElement:
    try:
        return DataElement(tag, vr, value, validation_mode=config.IGNORE)
    except (ValueError, TypeError, OverflowError):   # a stored value the VR cannot carry
        return DataElement(tag, vr, None, validation_mode=config.IGNORE)


def response_charset(requested: str | list[str] | None,
                     texts: list[str]) -> str | list[str] | None:
    """Echo the requested character set unless a value cannot be written in it; then
    answer in UTF-8 (ISO_IR 192) rather than corrupt a name."""
    wide = [t for t in texts if not t.isascii()]
    if not wide:
        return requested
    if requested is not None:
        names = [requested] if isinstance(requested, str) else list(requested)
        codecs = convert_encodings(names)
        if all(any(_encodes(t, c) for c in codecs) for t in wide):
            return requested
    return "ISO_IR 192"


def _encodes(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except (UnicodeEncodeError, LookupError):
        return False
    return True
