from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest

from node.datadir import restrict_umask
from node.testing.nodes import NodeThread, loopback_config

if TYPE_CHECKING:
    from node.testing.postgres import PrivateCluster


@pytest.fixture(scope="session", autouse=True)
def private_umask() -> Iterator[None]:
    """Every `medfed` command runs with umask 077 (node.datadir.restrict_umask), and a node
    refuses a data folder open to others. In-process nodes get the same umask for the
    whole session, so whether a test's folders are private does not depend on whether an
    earlier test happened to run the CLI in this process."""
    previous = restrict_umask()
    yield
    os.umask(previous)


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


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator["PrivateCluster"]:
    """One private PostgreSQL cluster for the whole session (initdb + pg_ctl in a temp
    dir, unix socket only); each test that needs one gets its own database in it."""
    from node.testing.postgres import PrivateCluster

    with PrivateCluster() as cluster:
        yield cluster
