from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from node.testing.nodes import NodeThread, loopback_config


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeThread]]:
    """Start nodes on ephemeral loopback ports; all are stopped at the end."""
    started: list[NodeThread] = []

    def _start(name: str = "node", **kwargs: object) -> NodeThread:
        cfg = loopback_config(tmp_path / name, name=name, **kwargs)  # type: ignore[arg-type]
        node = NodeThread(cfg).start()
        started.append(node)
        return node

    yield _start
    for node in reversed(started):
        node.stop()
