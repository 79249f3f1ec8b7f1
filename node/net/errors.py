"""What can go wrong when this node calls a peer, as exceptions the caller can act on.

The query fan-out needs to tell "that site is down" (PeerUnreachable), "that site is
slow" (PeerTimeout) and "that site said no" (PeerRefused, with the site's reason) apart,
because the answer to the clinician lists sites in exactly those groups.
"""

from __future__ import annotations


class PeerError(Exception):
    """Base class for a failed call to a federation peer."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"peer {node[:16]}: {message}")
        self.node = node


class PeerUnreachable(PeerError):
    """No connection could be made (down, wrong address, network)."""


class PeerTimeout(PeerError):
    """The peer did not answer before the deadline."""


class PeerRefused(PeerError):
    """The peer answered with an error status or refused the TLS handshake (status 0)."""

    def __init__(self, node: str, status: int, code: str, reason: str) -> None:
        super().__init__(node, f"refused ({status} {code}): {reason}")
        self.status = status
        self.code = code
        self.reason = reason


class PeerProtocolError(PeerError):
    """The peer answered, but not with what the protocol says (e.g. no JSON object)."""
