"""Who may speak on the DHT: an injected membership check.

The DHT does not own the roster; it only asks ``is_member(verify_key)`` for every
datagram sender, every contact it learns of and every record publisher, so that the
federation roster (node/net) can plug in later and a revoked member drops out at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class Membership(Protocol):
    def is_member(self, verify_key: bytes) -> bool: ...

    def listed_address(self, verify_key: bytes) -> tuple[str, int] | None:
        """The DHT address the (signed) roster lists for this member, if any."""
        ...


@dataclass
class StaticMembership:
    """A fixed set of member verify keys (tests, the simulator, single-site demos)."""

    keys: set[bytes] = field(default_factory=set)

    def is_member(self, verify_key: bytes) -> bool:
        return verify_key in self.keys

    def listed_address(self, verify_key: bytes) -> tuple[str, int] | None:
        return None   # no addresses: every claimed address is challenged

    def add(self, verify_key: bytes) -> None:
        self.keys.add(verify_key)

    def remove(self, verify_key: bytes) -> None:
        self.keys.discard(verify_key)
