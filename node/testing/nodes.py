"""Run a node on its own event-loop thread, for tests and the demo.

Tests and the demo drive the node with blocking tools (dcmtk subprocesses); the node
needs its event loop free meanwhile, so it gets a thread of its own.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any, Awaitable, TypeVar

from ..config.model import AllowedPeer, DicomConfig, Destination, NodeConfig
from ..node import Node

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (for tools that need a number up front)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


TEST_VIEWER = "viewer"    # the local user the test AE titles act for ([dicom.users])


def loopback_config(data_dir: Path, *, name: str = "Test Hospital", ae_title: str = "MEDFED",
                    allow: tuple[str, ...] = ("STORESCU@127.0.0.1", "FINDSCU@127.0.0.1",
                                              "GETSCU@127.0.0.1", "MOVESCU@127.0.0.1",
                                              "ECHOSCU@127.0.0.1", "PYNETDICOM@127.0.0.1"),
                    destinations: dict[str, tuple[str, int]] | None = None,
                    receivers: int = 0, **overrides: Any) -> NodeConfig:
    """A NodeConfig on ephemeral loopback ports, for tests and the demo. ``receivers``:
    DICOM receiver processes (0: the node's own process serves every association, as
    an in-process test expects; ``medfed run`` defaults to one per core)."""
    dicom = DicomConfig(
        ae_title=ae_title, host="127.0.0.1", port=0,
        allow=tuple(AllowedPeer.parse(a) for a in allow),
        destinations=tuple(Destination(ae, h, p) for ae, (h, p) in (destinations or {}).items()),
        users=tuple((AllowedPeer.parse(a).ae_title, TEST_VIEWER) for a in allow),
        network_timeout_s=10, acse_timeout_s=10, dimse_timeout_s=20, receivers=receivers)
    return NodeConfig(name=name, data_dir=data_dir, dicom=dicom, http_port=0, peer_port=0,
                      dht_port=0, **overrides)


class NodeThread:
    """A started node whose loop runs in a background thread."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name=f"node-{cfg.name}")
        self.node = Node(cfg)

    def start(self) -> "NodeThread":
        self._thread.start()
        self.call(self.node.start())
        return self

    def call(self, coro: Awaitable[T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    @property
    def dicom_port(self) -> int:
        return self.node.ports.dicom

    def stop(self) -> None:
        try:
            self.call(self.node.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def __enter__(self) -> "NodeThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
