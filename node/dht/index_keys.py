"""DHT keys for the federation index: keyed hashes of normalised values.

A key is HMAC-SHA256(federation index key, label ‖ 0x00 ‖ normalised value), so DHT
nodes — and anyone watching the wire — see 32 random-looking bytes, never a pseudonym,
modality or body part, and cannot test guesses without the federation's index key.
Values are normalised first ("ct", " CT ") so every site derives the same key, and
validated so that free text cannot slip into a key by mistake.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

MIN_INDEX_KEY_BYTES = 32
_DOMAIN = b"medfed-index-v1"
_CODE = re.compile(r"[A-Z0-9_]{1,16}")          # DICOM CS-like codes: CT, CHEST, L_SPINE
_MONTH = re.compile(r"(\d{4})-?(\d{2})")
_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,128}")   # pseudonyms and bundle ids


class IndexKeyError(ValueError):
    """A value cannot be turned into an index key (the message says which and why)."""


def _code(value: str, what: str) -> str:
    norm = " ".join(str(value).split()).upper().replace(" ", "_")
    if not _CODE.fullmatch(norm):
        raise IndexKeyError(f"{what} must be a short DICOM code (1-16 of A-Z 0-9 _); "
                            "the value given is not (not shown: it may be PHI)")
    return norm


def _month(value: str) -> str:
    match = _MONTH.fullmatch(str(value).strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise IndexKeyError("study month must look like YYYY-MM (e.g. 2024-03)")
    return f"{match.group(1)}-{match.group(2)}"


def _token(value: str, what: str) -> str:
    norm = str(value).strip()
    if not _TOKEN.fullmatch(norm):
        raise IndexKeyError(f"{what} must be 1-128 characters of A-Z a-z 0-9 . _ : - "
                            "(the value given is not shown: it may be PHI)")
    return norm


@dataclass(frozen=True)
class IndexKeys:
    """Derives index keys with one federation index key (shared by members only)."""

    index_key: bytes

    def __post_init__(self) -> None:
        if len(self.index_key) < MIN_INDEX_KEY_BYTES:
            raise IndexKeyError(f"the federation index key must be at least "
                                f"{MIN_INDEX_KEY_BYTES} random bytes")

    def __repr__(self) -> str:
        return "IndexKeys(<secret>)"

    def _derive(self, label: str, value: str) -> bytes:
        message = _DOMAIN + b"\x00" + label.encode() + b"\x00" + value.encode()
        return hmac.new(self.index_key, message, hashlib.sha256).digest()

    def patient_key(self, pseudonym: str) -> bytes:
        return self._derive("patient", _token(pseudonym, "patient pseudonym"))

    def modality_bodypart_key(self, modality: str, body_part: str) -> bytes:
        value = f"{_code(modality, 'modality')}|{_code(body_part, 'body part')}"
        return self._derive("modality+bodypart", value)

    def modality_month_key(self, modality: str, month: str) -> bytes:
        return self._derive("modality+month", f"{_code(modality, 'modality')}|{_month(month)}")

    def bundle_key(self, bundle_id: str) -> bytes:
        return self._derive("bundle", _token(bundle_id, "bundle id"))
