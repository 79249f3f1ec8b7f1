"""Open a real metadata store of either kind for a test: an SQLite file, or a fresh
database in the session's private PostgreSQL cluster (see ``postgres_cluster`` in
conftest.py). Tests that take ``store_kind`` run once per backend."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import pytest

from node.store.db import MetadataStore
from node.testing.postgres import PrivateCluster

KINDS = ("sqlite", "postgresql")


def store_url(kind: str, request: pytest.FixtureRequest) -> str | None:
    """None for SQLite; a new database's URL for PostgreSQL."""
    if kind == "sqlite":
        return None
    cluster: PrivateCluster = request.getfixturevalue("postgres_cluster")
    return cluster.new_database()


@asynccontextmanager
async def open_store(kind: str, folder: Path, request: pytest.FixtureRequest
                     ) -> AsyncIterator[MetadataStore]:
    url = store_url(kind, request)
    async with MetadataStore(folder / "meta.sqlite", durability="normal", url=url) as store:
        yield store
