"""Where a bundle's key shares and replicas go: the members closest to it in XOR distance.

Why XOR distance to the bundle id: every node can compute the same candidate list from
the roster alone, so a requester finds the share holders and replica holders without
asking the owner (who may be offline), and placements spread evenly over the federation.
Pure: works on node id strings.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable


def distance(a_hex: str, b_hex: str) -> int:
    return int(a_hex, 16) ^ int(b_hex, 16)


def ranked(bundle_id: str, candidates: Iterable[str], *, exclude: Collection[str] = ()) -> list[str]:
    """All candidates (minus ``exclude``), closest to the bundle first; ties cannot occur."""
    return sorted({c for c in candidates if c not in exclude}, key=lambda c: distance(c, bundle_id))


def share_candidates(bundle_id: str, members: Iterable[str], owner: str) -> list[str]:
    """Share holders in order of preference: the first n take the shares, the rest stand by."""
    return ranked(bundle_id, members, exclude={owner})


def replica_candidates(bundle_id: str, members: Iterable[str], owner: str,
                       avoid: Collection[str] = ()) -> list[str]:
    """Replica holders in order of preference: closest members that are not in ``avoid``
    (typically the share holders) first, then the avoided ones, never the owner."""
    everyone = ranked(bundle_id, members, exclude={owner})
    return [c for c in everyone if c not in avoid] + [c for c in everyone if c in avoid]
