"""UIDs taken from a DICOMweb URL: digits and dots only, so a path can never escape.

Every UID in a route passes through ``checked_uid`` before it reaches the store or a
file name; ``..``, slashes, encoded separators and over-long values are refused with
400 and a reason, not looked up.
"""

from __future__ import annotations

import re

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_UID = 64


class BadUid(ValueError):
    """A UID in the request is not a DICOM UID (the message names which one)."""


def checked_uid(value: str, what: str) -> str:
    """``value`` if it is a DICOM UID (PS3.5 9.1), else BadUid naming ``what``."""
    if not isinstance(value, str) or len(value) > MAX_UID or not _UID.match(value):
        raise BadUid(f"{what} must be a DICOM UID (digits and dots, at most {MAX_UID} "
                     "characters)")
    return value
