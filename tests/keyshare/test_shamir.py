"""Shamir k-of-n over GF(256): recovery, secrecy of k-1 shares, refusal of bad share sets."""

from __future__ import annotations

import itertools
import math
import random
import time

import numpy as np
import pyshamir
import pytest
from pyshamir import _utils as pyshamir_gf

from node.keyshare.shamir import (
    Share,
    ShamirError,
    combine,
    gf_mul,
    lagrange_at_zero,
    refresh,
    secret_check,
    split,
)


class SeededRandom:
    """A deterministic ``token_bytes`` source so statistical tests are reproducible."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def token_bytes(self, nbytes: int) -> bytes:
        return self._random.randbytes(nbytes)


class ScriptedRandom:
    """Hands out pre-set bytes: lets a test choose the polynomial coefficients."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def token_bytes(self, nbytes: int) -> bytes:
        out, self._data = bytes(self._data[:nbytes]), self._data[nbytes:]
        assert len(out) == nbytes
        return out


def slow_gf_mul(a: int, b: int) -> int:
    """Shift-and-add multiplication modulo 0x11B, independent of the module's tables."""
    product = 0
    while b:
        if b & 1:
            product ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11B
        b >>= 1
    return product


SECRET = bytes(range(100, 132))


@pytest.mark.parametrize(("k", "n"), [(2, 2), (2, 3), (3, 5), (4, 6), (5, 5), (3, 7)])
def test_every_subset_of_at_least_k_shares_recovers(k: int, n: int) -> None:
    shares = split(SECRET, k, n)
    assert [s.x for s in shares] == list(range(1, n + 1))
    for size in range(k, n + 1):
        for subset in itertools.combinations(shares, size):
            assert combine(subset) == SECRET
            assert combine(reversed(subset)) == SECRET


def test_split_is_randomised_and_shares_differ_from_secret() -> None:
    first, second = split(SECRET, 3, 5), split(SECRET, 3, 5)
    assert first[0].split_id != second[0].split_id
    assert [s.data for s in first] != [s.data for s in second]
    assert all(s.data != SECRET for s in first + second)


def test_fewer_than_k_shares_are_refused() -> None:
    shares = split(SECRET, 3, 5)
    with pytest.raises(ShamirError, match="2 distinct share.* 3 needed"):
        combine(shares[:2])
    with pytest.raises(ShamirError, match="no shares"):
        combine([])


def test_duplicate_shares_are_refused() -> None:
    shares = split(SECRET, 3, 5)
    with pytest.raises(ShamirError, match="duplicate share x"):
        combine([shares[0], shares[1], shares[0]])
    forged = Share(shares[1].x, bytes(32), 3, 5, shares[1].split_id, shares[1].check)
    with pytest.raises(ShamirError, match="duplicate share x"):
        combine([shares[0], shares[1], forged])


def test_shares_of_different_splits_do_not_mix() -> None:
    old, new = split(SECRET, 3, 5), split(SECRET, 3, 5)
    with pytest.raises(ShamirError, match="different splits"):
        combine([old[0], old[1], new[2]])


def test_refresh_keeps_the_secret_and_revokes_old_shares() -> None:
    old = split(SECRET, 3, 5)
    new = refresh(old[1:4], n=7)
    assert len(new) == 7 and new[0].k == 3
    assert new[0].split_id != old[0].split_id
    assert combine(new[4:7]) == SECRET
    with pytest.raises(ShamirError, match="different splits"):
        combine([old[0], new[1], new[2]])


def test_corrupt_share_is_detected_with_exactly_k_and_with_more() -> None:
    shares = split(SECRET, 3, 5)
    bad_data = bytes([shares[2].data[0] ^ 1]) + shares[2].data[1:]
    bad = Share(shares[2].x, bad_data, 3, 5, shares[2].split_id, shares[2].check)
    with pytest.raises(ShamirError, match="fails its check"):
        combine([shares[0], shares[1], bad])
    with pytest.raises(ShamirError, match="does not lie on the polynomial"):
        combine([shares[0], shares[1], shares[3], bad])
    wrong_check = Share(shares[2].x, shares[2].data, 3, 5, shares[2].split_id, bytes(16))
    with pytest.raises(ShamirError, match="disagree"):
        combine([shares[0], shares[1], wrong_check])


def test_share_bytes_round_trip_and_malformed_bytes() -> None:
    share = split(SECRET, 3, 5)[4]
    raw = share.to_bytes()
    assert Share.from_bytes(raw) == share
    assert SECRET not in raw
    with pytest.raises(ShamirError, match="shorter than"):
        Share.from_bytes(raw[:10])
    with pytest.raises(ShamirError, match="length field"):
        Share.from_bytes(raw[:-1])
    with pytest.raises(ShamirError, match="version"):
        Share.from_bytes(b"\x09" + raw[1:])
    with pytest.raises(ShamirError, match="outside 1..255"):
        Share.from_bytes(raw[:1] + b"\x00" + raw[2:])
    with pytest.raises(ShamirError, match="k <= n"):
        Share.from_bytes(raw[:2] + b"\x09" + raw[3:])


def test_repr_does_not_show_share_data() -> None:
    share = split(SECRET, 2, 3)[0]
    assert share.data.hex() not in repr(share) and str(share.data) not in repr(share)


@pytest.mark.parametrize(
    ("secret", "k", "n", "message"),
    [
        (SECRET, 1, 3, "2 <= k <= n"),
        (SECRET, 4, 3, "2 <= k <= n"),
        (SECRET, 3, 256, "n <= 255"),
        (b"short", 2, 3, "random keys"),
    ],
)
def test_bad_split_parameters(secret: bytes, k: int, n: int, message: str) -> None:
    with pytest.raises(ShamirError, match=message):
        split(secret, k, n)


def test_field_multiplication_matches_two_independent_implementations() -> None:
    for a in range(256):
        for b in range(0, 256, 7):
            expected = slow_gf_mul(a, b)
            assert gf_mul(a, b) == expected
            assert pyshamir_gf.mul(a, b) == expected


def test_pyshamir_split_combines_with_our_interpolation() -> None:
    parts = pyshamir.split(SECRET, 5, 3)
    for subset in itertools.combinations(parts, 3):
        assert lagrange_at_zero([(p[-1], bytes(p[:-1])) for p in subset]) == SECRET
    split_id = bytes(range(16))
    shares = [Share(p[-1], bytes(p[:-1]), 3, 5, split_id, secret_check(split_id, SECRET)) for p in parts]
    assert combine(shares[1:4]) == SECRET
    assert combine(shares) == SECRET


def test_our_split_combines_with_pyshamir() -> None:
    shares = split(SECRET, 3, 5)
    for subset in itertools.combinations(shares, 3):
        assert bytes(pyshamir.combine([bytearray(s.data + bytes([s.x])) for s in subset])) == SECRET


def test_k_minus_1_shares_are_uniform_for_every_secret_exhaustively() -> None:
    """k=3: over all 65536 coefficient pairs, shares x=2 and x=5 take every value pair exactly once."""
    pairs = np.arange(65536, dtype=np.uint32)
    coefficient_1 = (pairs & 0xFF).astype(np.uint8).tobytes()
    coefficient_2 = (pairs >> 8).astype(np.uint8).tobytes()
    for secret_byte in (0x00, 0xC3):
        seen = bytearray(65536)
        for start in range(0, 65536, 16):  # one 16-byte split covers 16 coefficient pairs
            script = bytes(16) + coefficient_1[start : start + 16] + coefficient_2[start : start + 16]
            shares = split(bytes([secret_byte]) * 16, 3, 5, rng=ScriptedRandom(script))
            for y2, y5 in zip(shares[1].data, shares[4].data):
                seen[y2 << 8 | y5] += 1
        assert set(seen) == {1}


def test_every_candidate_secret_has_exactly_one_polynomial_through_k_minus_1_shares() -> None:
    """For observed shares at x=1 and x=4 (k=3), each candidate secret byte fits exactly one (a1, a2)."""
    table = np.array([[slow_gf_mul(a, b) for b in range(256)] for a in range(256)], dtype=np.uint8)
    shares = split(SECRET, 3, 5, rng=SeededRandom(11))
    a1, a2 = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")

    def evaluate(secret_byte: int, x: int) -> np.ndarray:
        return secret_byte ^ table[a1, x] ^ table[a2, slow_gf_mul(x, x)]

    for position in (0, 17, 31):
        y1, y4 = shares[0].data[position], shares[3].data[position]
        for candidate in range(256):
            fits = (evaluate(candidate, 1) == y1) & (evaluate(candidate, 4) == y4)
            assert int(fits.sum()) == 1


def _chi_square_critical(df: int, z: float = 3.719) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z=3.719: p = 1e-4)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _share_byte_histogram(secret: bytes, rng: object, trials: int) -> np.ndarray:
    counts = np.zeros(256, dtype=np.int64)
    for _ in range(trials):
        shares = split(secret, 3, 5, rng=rng)  # type: ignore[arg-type]
        for share in (shares[1], shares[4]):  # k-1 = 2 shares
            counts += np.bincount(np.frombuffer(share.data, dtype=np.uint8), minlength=256)
    return counts


def _homogeneity(a: np.ndarray, b: np.ndarray) -> float:
    total = a + b
    expected_a, expected_b = total * a.sum() / total.sum(), total * b.sum() / total.sum()
    return float(((a - expected_a) ** 2 / expected_a).sum() + ((b - expected_b) ** 2 / expected_b).sum())


def test_k_minus_1_share_bytes_are_indistinguishable_chi_square() -> None:
    zeros = _share_byte_histogram(bytes(32), SeededRandom(1), 1500)
    ones = _share_byte_histogram(b"\xff" * 32, SeededRandom(2), 1500)
    critical = _chi_square_critical(255)
    uniform = zeros.sum() / 256
    assert float(((zeros - uniform) ** 2 / uniform).sum()) < critical
    assert _homogeneity(zeros, ones) < critical


def test_chi_square_detects_a_biased_random_source() -> None:
    """The statistic above has power: a source that yields zero bytes half the time leaks the secret."""

    class HalfRandom(SeededRandom):
        def token_bytes(self, nbytes: int) -> bytes:
            return bytes(b if b & 1 else 0 for b in super().token_bytes(nbytes))

    zeros = _share_byte_histogram(bytes(32), HalfRandom(1), 300)
    ones = _share_byte_histogram(b"\xff" * 32, HalfRandom(2), 300)
    assert _homogeneity(zeros, ones) > _chi_square_critical(255)


def test_split_and_combine_run_thousands_per_second() -> None:
    rounds = 2000
    start = time.perf_counter()
    for _ in range(rounds):
        combine(split(SECRET, 3, 5)[:3])
    assert rounds / (time.perf_counter() - start) > 2000
