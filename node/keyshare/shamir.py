"""Shamir k-of-n secret sharing over GF(256), byte by byte.

Why: a bundle key must survive the loss of up to n-k share holders, while any
k-1 colluding holders learn nothing about it (DESIGN: "k-1 colluding share
holders learn nothing").

The field is GF(2^8) with the AES polynomial x^8+x^4+x^3+x+1 (0x11B), the same
field as HashiCorp Vault and the ``pyshamir`` package, so shares can be checked
against an independent implementation. Share ``x`` coordinates are 1..n.
Speed comes from ``bytes.translate``: multiplying every byte of a share by one
field element is a single C call with a 256-byte row of a multiplication table,
so split/combine cost O(n*k) C calls, not O(n*k*len) Python operations.

Every share carries:

* ``split_id`` — 16 random bytes, new for every split (and every ``refresh``).
  Shares of different polynomials never combine: mixing them would silently
  give a wrong key, so ``combine`` refuses.
* ``check`` — SHA-256("medfed/shamir/v1" || split_id || secret), first 16 bytes.
  ``combine`` verifies it, so a corrupt share is an error, not a wrong key.
  Leakage: Shamir alone is information-theoretically hiding; with the check it
  is computationally hiding (finding the secret from the check means inverting
  SHA-256 over the secret's whole space). That is only safe for high-entropy
  secrets, so ``split`` requires at least 16 bytes; the intended secrets are
  random 32-byte bundle keys, and whoever holds the bundle ciphertext can test
  a key guess against it anyway, so the check adds nothing an attacker lacks.
  The split_id in the hash stops two refreshed share sets of one secret from
  revealing, by equal checks, that they protect the same key.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence

SPLIT_ID_BYTES = 16
CHECK_BYTES = 16
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 4096
SHARE_VERSION = 1
_SHARE_HEAD = struct.Struct(">BBBB16s16sH")  # version, x, k, n, split_id, check, len
_CHECK_DOMAIN = b"medfed/shamir/v1"


class ShamirError(Exception):
    """Shares cannot be split or combined (bad parameters, missing, mixed or corrupt shares)."""


class RandomSource(Protocol):
    """Anything with ``token_bytes`` — the ``secrets`` module, or a seeded source in tests."""

    def token_bytes(self, nbytes: int) -> bytes: ...


def _build_tables() -> tuple[tuple[int, ...], tuple[int, ...], tuple[bytes, ...]]:
    """Log/exp tables for generator 3, and one 256-byte multiply-by-c row per c."""
    exp = [0] * 510
    log = [0] * 256
    value = 1
    for power in range(255):
        exp[power] = exp[power + 255] = value
        log[value] = power
        doubled = (value << 1) ^ (0x11B if value & 0x80 else 0)
        value ^= doubled  # value * 3 = value * 2 + value
    rows = [bytes(256)] + [
        bytes(0 if a == 0 else exp[log[a] + log[c]] for a in range(256)) for c in range(1, 256)
    ]
    return tuple(exp), tuple(log), tuple(rows)


_EXP, _LOG, _MUL_ROWS = _build_tables()


def gf_mul(a: int, b: int) -> int:
    """Product of two field elements."""
    return 0 if a == 0 or b == 0 else _EXP[_LOG[a] + _LOG[b]]


def _gf_div(a: int, b: int) -> int:
    return 0 if a == 0 else _EXP[_LOG[a] + 255 - _LOG[b]]


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def _scale(data: bytes, c: int) -> bytes:
    """Every byte of ``data`` times the field element ``c``."""
    return data.translate(_MUL_ROWS[c])


def secret_check(split_id: bytes, secret: bytes) -> bytes:
    """The commitment every share of one split carries (see module docstring)."""
    return hashlib.sha256(_CHECK_DOMAIN + split_id + secret).digest()[:CHECK_BYTES]


@dataclass(frozen=True)
class Share:
    """One holder's share. ``data`` is hidden from repr so it never lands in a log."""

    x: int
    data: bytes = field(repr=False)
    k: int
    n: int
    split_id: bytes
    check: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        head = _SHARE_HEAD.pack(
            SHARE_VERSION, self.x, self.k, self.n, self.split_id, self.check, len(self.data)
        )
        return head + self.data

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Share":
        if len(raw) < _SHARE_HEAD.size:
            raise ShamirError(f"key share is {len(raw)} bytes, shorter than its {_SHARE_HEAD.size}-byte header")
        version, x, k, n, split_id, check, length = _SHARE_HEAD.unpack_from(raw)
        if version != SHARE_VERSION:
            raise ShamirError(f"key share format version {version} is not supported (expected {SHARE_VERSION})")
        if len(raw) != _SHARE_HEAD.size + length:
            raise ShamirError(f"key share length field says {length} data bytes, found {len(raw) - _SHARE_HEAD.size}")
        share = cls(x, bytes(raw[_SHARE_HEAD.size :]), k, n, split_id, check)
        _validate_share(share)
        return share


def _validate_params(k: int, n: int) -> None:
    if not 2 <= k <= n <= 255:
        raise ShamirError(f"need 2 <= k <= n <= 255 for a k-of-n split, got k={k}, n={n}")


def _validate_share(share: Share) -> None:
    _validate_params(share.k, share.n)
    if not 1 <= share.x <= 255:
        raise ShamirError(f"share x={share.x} is outside 1..255")
    if len(share.split_id) != SPLIT_ID_BYTES or len(share.check) != CHECK_BYTES:
        raise ShamirError("share split id or check value has the wrong length")
    if not MIN_SECRET_BYTES <= len(share.data) <= MAX_SECRET_BYTES:
        raise ShamirError(f"share data is {len(share.data)} bytes, outside {MIN_SECRET_BYTES}..{MAX_SECRET_BYTES}")


def split(secret: bytes, k: int, n: int, *, rng: RandomSource = secrets) -> list[Share]:
    """Split ``secret`` into ``n`` shares so that any ``k`` recover it and k-1 reveal nothing."""
    _validate_params(k, n)
    secret = bytes(secret)
    if not MIN_SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
        raise ShamirError(
            f"secret is {len(secret)} bytes; Shamir here protects random keys of "
            f"{MIN_SECRET_BYTES}..{MAX_SECRET_BYTES} bytes"
        )
    size = len(secret)
    split_id = rng.token_bytes(SPLIT_ID_BYTES)
    randomness = rng.token_bytes(size * (k - 1))
    # coefficient j (1..k-1) of every byte polynomial, highest degree last
    coefficients = [secret] + [randomness[(j - 1) * size : j * size] for j in range(1, k)]
    check = secret_check(split_id, secret)
    shares = []
    for x in range(1, n + 1):
        y = coefficients[-1]
        for coefficient in reversed(coefficients[:-1]):  # Horner, all bytes at once
            y = _xor(_scale(y, x), coefficient)
        shares.append(Share(x, y, k, n, split_id, check))
    return shares


def _lagrange_at(points: Sequence[tuple[int, bytes]], at: int) -> bytes:
    """Value at ``at`` of the byte-wise polynomials through ``points`` (distinct x)."""
    result = bytes(len(points[0][1]))
    for i, (xi, yi) in enumerate(points):
        numerator = denominator = 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = gf_mul(numerator, at ^ xj)
                denominator = gf_mul(denominator, xi ^ xj)
        result = _xor(result, _scale(yi, _gf_div(numerator, denominator)))
    return result


def lagrange_at_zero(points: Sequence[tuple[int, bytes]]) -> bytes:
    """The raw interpolation (no checks beyond distinct, non-zero x): the secret of ``points``."""
    xs = [x for x, _ in points]
    if not points or len(set(xs)) != len(xs) or not all(1 <= x <= 255 for x in xs):
        raise ShamirError("interpolation needs at least one point and distinct x in 1..255")
    if len({len(y) for _, y in points}) != 1:
        raise ShamirError("interpolation points have different lengths")
    return _lagrange_at(points, 0)


def _consistent_set(shares: Sequence[Share]) -> None:
    first = shares[0]
    for share in shares:
        _validate_share(share)
    if len({s.split_id for s in shares}) != 1:
        raise ShamirError(
            "shares come from different splits (a refresh made new shares); "
            "collect k shares of the current split"
        )
    same = {(s.k, s.n, s.check, len(s.data)) for s in shares}
    if len(same) != 1:
        raise ShamirError("shares of one split disagree on k, n, length or check value: a share is corrupt")
    xs = [s.x for s in shares]
    if len(set(xs)) != len(xs):
        raise ShamirError(f"duplicate share x values {sorted(x for x in set(xs) if xs.count(x) > 1)}")
    if len(shares) < first.k:
        raise ShamirError(f"{len(shares)} distinct share(s) given, {first.k} needed")


def combine(shares: Iterable[Share]) -> bytes:
    """Recover the secret; every share beyond the first k must lie on the same polynomial."""
    shares = list(shares)
    if not shares:
        raise ShamirError("no shares given")
    _consistent_set(shares)
    k = shares[0].k
    basis = [(s.x, s.data) for s in shares[:k]]
    for extra in shares[k:]:
        if _lagrange_at(basis, extra.x) != extra.data:
            raise ShamirError(f"share x={extra.x} does not lie on the polynomial of the others: a share is corrupt")
    secret = _lagrange_at(basis, 0)
    if not secrets.compare_digest(secret_check(shares[0].split_id, secret), shares[0].check):
        raise ShamirError("shares combine to a value that fails its check: at least one share is corrupt")
    return secret


def refresh(
    shares: Iterable[Share], *, k: int | None = None, n: int | None = None, rng: RandomSource = secrets
) -> list[Share]:
    """New polynomial and new split_id for the same secret; old shares no longer mix with new ones.

    Callers that hold the secret itself should simply ``split`` it again.
    """
    shares = list(shares)
    secret = combine(shares)
    return split(secret, k or shares[0].k, n or shares[0].n, rng=rng)
