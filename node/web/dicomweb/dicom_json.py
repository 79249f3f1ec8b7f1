"""Datasets as the DICOM JSON model (PS3.18 F.2), and the JSON responses that carry them.

Query answers are built by the node itself from its own store (flat, known VRs), so they
are converted here directly: pydicom's general converter validates every value and
costs more than the query. Metadata of stored instances goes through pydicom's
``to_json_dict`` (``metadata.py``), which knows every VR and nesting.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from aiohttp import web
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

DICOM_JSON = "application/dicom+json"
_INT_VRS = {"IS", "US", "SS", "UL", "SL", "UV", "SV"}
_FLOAT_VRS = {"DS", "FL", "FD"}


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return [v for v in value if v is not None and v != ""]
    if isinstance(value, str) and "\\" in value:
        return [v for v in value.split("\\")]
    return [value]


def _convert(vr: str, value: Any) -> Any:
    if vr == "PN":
        return {"Alphabetic": str(value)}
    if vr in _INT_VRS:
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    if vr in _FLOAT_VRS:
        try:
            return float(value)
        except (TypeError, ValueError):
            return None
    return str(value)


def flat_json(ds: Dataset) -> dict[str, Any]:
    """A flat dataset (no sequences, no binary) in the DICOM JSON model."""
    out: dict[str, Any] = {}
    for elem in ds.elements():
        vr = str(elem.VR)
        tag = f"{int(elem.tag):08X}"
        if vr == "SQ":
            out[tag] = {"vr": vr}
            continue
        values = [v for v in (_convert(vr, x) for x in _values(elem.value)) if v is not None]
        out[tag] = {"vr": vr, "Value": values} if values else {"vr": vr}
    return out


def json_response(items: Iterable[dict[str, Any]], *, headers: dict[str, str] | None = None,
                  status: int = 200) -> web.Response:
    body = json.dumps(list(items), separators=(",", ":")).encode()
    return web.Response(body=body, status=status, content_type=DICOM_JSON, headers=headers)
