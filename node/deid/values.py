"""Replacement values for de-identification: VR-valid dummies and whole-day date shifts.

Dummies are fixed, obviously fake and valid for their VR so that a de-identified
file still passes pydicom's strict write validation. Dates are shifted by whole days
so intervals between a patient's dates survive while the calendar dates do not.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from pydicom.dataelem import empty_value_for_VR
from pydicom.multival import MultiValue

DUMMY_TEXT = "ANONYMIZED"
DUMMY_DATE = "19000101"
_DUMMY_BY_VR: dict[str, Any] = {
    "AS": "000D",
    "AT": 0,
    "DA": DUMMY_DATE,
    "DS": "0",
    "DT": DUMMY_DATE + "000000",
    "FD": 0.0,
    "FL": 0.0,
    "IS": "0",
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "TM": "000000",
    "UL": 0,
    "US": 0,
    "UV": 0,
}
_BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_DA_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DT_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{0,6}(?:\.\d{1,6})?(?:[+-]\d{4})?)$")


def concrete_vr(vr: str) -> str:
    """'US or SS' → 'US': a dummy must be written with one definite VR."""
    return vr.split(" or ")[0].strip()


def dummy_value(vr: str) -> Any:
    """A non-empty value that carries no information and is valid for `vr`."""
    vr = concrete_vr(vr)
    if vr in _BYTES_VRS:
        return b"\x00" * 8  # a multiple of every binary VR's unit size
    return _DUMMY_BY_VR.get(vr, DUMMY_TEXT)


def empty_value(vr: str) -> Any:
    """Zero-length value for `vr` (the Z action)."""
    return empty_value_for_VR(concrete_vr(vr))


def _shift_da(value: str, days: int) -> str | None:
    m = _DA_RE.match(value.strip())
    if not m:
        return None
    try:
        day = dt.date(int(m[1]), int(m[2]), int(m[3])) + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return day.strftime("%Y%m%d") if day.year >= 1000 else None


def _shift_dt(value: str, days: int) -> str | None:
    """Shift the date part of a DT, keeping time of day, fraction and UTC offset."""
    m = _DT_RE.match(value.strip())
    if not m:
        return None
    shifted = _shift_da(m[1] + m[2] + m[3], days)
    return None if shifted is None else shifted + m[4]


_SHIFTERS: dict[str, Callable[[str, int], str | None]] = {"DA": _shift_da, "DT": _shift_dt}


def shift_dates(vr: str, value: Any, days: int) -> Any | None:
    """Shift every value of a DA/DT element; None when any value cannot be shifted exactly
    (partial dates, ranges, old ACR-NEMA formats) so the caller falls back to a safe action."""
    shifter = _SHIFTERS.get(vr)
    if shifter is None:
        return None
    if value is None or value == "":
        return value
    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    shifted = [shifter(str(v), days) for v in values]
    if any(s is None for s in shifted):
        return None
    return shifted if len(shifted) > 1 else shifted[0]
