"""Index keys are HMACs of normalised values under the federation index key."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest

from node.dht.index_keys import IndexKeys, IndexKeyError

SECRET = os.urandom(32)
KEYS = IndexKeys(SECRET)


def test_keys_are_hmac_sha256_with_domain_and_label() -> None:
    want = hmac.new(SECRET, b"medfed-index-v1\x00patient\x00PSN-123", hashlib.sha256).digest()
    assert KEYS.patient_key("PSN-123") == want
    assert len(KEYS.modality_bodypart_key("CT", "CHEST")) == 32


def test_normalisation_makes_sites_agree() -> None:
    assert KEYS.modality_bodypart_key(" ct", "chest ") == KEYS.modality_bodypart_key("CT", "CHEST")
    assert KEYS.modality_month_key("mr", "202403") == KEYS.modality_month_key("MR", "2024-03")
    assert KEYS.patient_key(" PSN-1 ") == KEYS.patient_key("PSN-1")


def test_keys_are_separated_by_label_value_and_secret() -> None:
    keys = {KEYS.patient_key("CT"), KEYS.bundle_key("CT"),
            KEYS.modality_bodypart_key("CT", "HEAD"), KEYS.modality_bodypart_key("CT", "CHEST"),
            KEYS.modality_month_key("CT", "2024-03"), KEYS.modality_month_key("CT", "2024-04"),
            IndexKeys(os.urandom(32)).patient_key("CT")}
    assert len(keys) == 7


@pytest.mark.parametrize("call", [
    lambda: KEYS.modality_bodypart_key("CT", "John Smith's chest, painful"),
    lambda: KEYS.modality_bodypart_key("", "CHEST"),
    lambda: KEYS.modality_month_key("CT", "2024-13"),
    lambda: KEYS.modality_month_key("CT", "March 2024"),
    lambda: KEYS.patient_key("Doe^John"),
    lambda: KEYS.patient_key(""),
    lambda: KEYS.bundle_key("x" * 200),
    lambda: IndexKeys(b"short"),
])
def test_bad_values_are_refused_without_echoing_them(call) -> None:
    with pytest.raises(IndexKeyError) as err:
        call()
    assert "John" not in str(err.value) and "Doe" not in str(err.value)


def test_secret_is_not_in_repr() -> None:
    assert SECRET.hex() not in repr(KEYS) and str(SECRET) not in repr(KEYS)
