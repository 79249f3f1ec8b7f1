"""What crossed the peer API, byte for byte: a recorder on the nodes' peer clients.

Every member-to-member byte of the peer API is a request body some node's client sent
or a response body it received, so observing the clients (``PeerClient.observers``)
sees all of it in plain text, above TLS. Used to show that a similarity query moves no
pixel data: ``image_bytes`` finds any run of an
image's pixel data inside the captured bodies; whole bodies on routes that carry image
bundles count as image bytes too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from node.net.client import Observer, PeerClient

IMAGE_ROUTES = ("/v1/series/fetch", "/v1/replicas")   # bundles travel only on these
WINDOW = 32


@dataclass
class Exchange:
    sender: str            # node name of the client
    method: str
    path: str
    sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)


class TrafficRecorder:
    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    def observer(self, sender: str) -> Observer:
        def observe(node_id: str, method: str, path: str, body: bytes) -> Callable[[bytes], None]:
            exchange = Exchange(sender, method, path.split("?")[0], bytearray(body))
            self.exchanges.append(exchange)
            return exchange.received.extend
        return observe

    def attach(self, client: PeerClient, sender: str) -> None:
        """Record every request ``client`` sends from now on (``sender`` names its node)."""
        client.observers.append(self.observer(sender))

    def clear(self) -> None:
        self.exchanges.clear()

    @property
    def total_bytes(self) -> int:
        return sum(len(e.sent) + len(e.received) for e in self.exchanges)


def pixel_windows(pixel_data: Iterable[bytes]) -> set[bytes]:
    """Aligned WINDOW-byte pieces of every image's pixel data (flat ones left out: a run
    of one or two byte values could match anything); any copy of 2 x WINDOW or more
    consecutive pixel bytes contains one of them."""
    out: set[bytes] = set()
    for data in pixel_data:
        for at in range(0, len(data) - WINDOW + 1, WINDOW):
            piece = bytes(data[at:at + WINDOW])
            if len(set(piece)) > 4:
                out.add(piece)
    return out


def _covered(body: bytes, windows: set[bytes]) -> int:
    covered = bytearray(len(body))
    for at in range(0, len(body) - WINDOW + 1):
        if body[at:at + WINDOW] in windows:
            covered[at:at + WINDOW] = b"\x01" * WINDOW
    return sum(covered)


def image_bytes(exchanges: Iterable[Exchange], windows: set[bytes]) -> int:
    """Bytes of pixel data (or of image bundles) that crossed the peer API."""
    total = 0
    for e in exchanges:
        if e.path.startswith(IMAGE_ROUTES):
            total += len(e.sent) + len(e.received)
        else:
            total += _covered(bytes(e.sent), windows) + _covered(bytes(e.received), windows)
    return total
