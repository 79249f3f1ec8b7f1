"""This node's published bundles: one row per series, advanced step by step.

Why a separate SQLite file (``data_dir/sharing.sqlite``) and not the metadata store:
the publisher's writes must never land inside an ingest transaction of the shared
connection, and the catalogue is owner-side bookkeeping only.

States, in order; a step is redone after a crash until its state is recorded:
``built`` (bundle file on disk, key kept) → ``keyed`` (shares at their holders) →
``replicated`` → ``published`` (DHT records out). ``content`` is a digest of the
series' stored instances, so a series that grew after publishing gets a new bundle.

The bundle key is kept here by the owner: it already holds the plain images, so the
key adds nothing an attacker of this node could not read anyway, and it lets the owner
serve its own bundles without asking share holders. No PHI is stored here: keyed
series UID and bundle id only (the plain series UID is the owner's own join key).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import aiosqlite

from node.keyshare.db import SqliteFile

STATES = ("built", "keyed", "replicated", "published")

SCHEMA = """
CREATE TABLE IF NOT EXISTS published_bundles (
    series_uid TEXT PRIMARY KEY,
    keyed_series_uid TEXT NOT NULL,
    bundle_id TEXT NOT NULL,
    bundle_key BLOB NOT NULL,
    content TEXT NOT NULL,
    size INTEGER NOT NULL,
    plain_size INTEGER NOT NULL,
    instances INTEGER NOT NULL,
    share_holders TEXT NOT NULL DEFAULT '[]',
    replica_holders TEXT NOT NULL DEFAULT '[]',
    state TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS published_bundle_id ON published_bundles(bundle_id);
CREATE INDEX IF NOT EXISTS published_keyed_uid ON published_bundles(keyed_series_uid);
"""


class CatalogError(Exception):
    """A catalogue update names an unknown state (opening errors are ``LedgerError``)."""


@dataclass(frozen=True)
class CatalogEntry:
    series_uid: str
    keyed_series_uid: str
    bundle_id: str
    bundle_key: bytes = field(repr=False)
    content: str
    size: int
    plain_size: int
    instances: int
    share_holders: tuple[str, ...] = ()
    replica_holders: tuple[str, ...] = ()
    state: str = "built"

    def reached(self, state: str) -> bool:
        return STATES.index(self.state) >= STATES.index(state)


_COLUMNS = ("series_uid, keyed_series_uid, bundle_id, bundle_key, content, size, plain_size, "
            "instances, share_holders, replica_holders, state")


def _entry(row: aiosqlite.Row) -> CatalogEntry:
    return CatalogEntry(row[0], row[1], row[2], bytes(row[3]), row[4], int(row[5]), int(row[6]),
                        int(row[7]), tuple(json.loads(row[8])), tuple(json.loads(row[9])), row[10])


class Catalog(SqliteFile):
    SCHEMA = SCHEMA
    WHAT = "sharing catalogue"

    async def _one(self, where: str, value: str) -> CatalogEntry | None:
        async with self.db.execute(f"SELECT {_COLUMNS} FROM published_bundles WHERE {where}=?",
                                   (value,)) as cur:
            row = await cur.fetchone()
        return _entry(row) if row else None

    async def by_series(self, series_uid: str) -> CatalogEntry | None:
        return await self._one("series_uid", series_uid)

    async def by_bundle(self, bundle_id: str) -> CatalogEntry | None:
        return await self._one("bundle_id", bundle_id)

    async def by_keyed_series(self, keyed_series_uid: str) -> CatalogEntry | None:
        return await self._one("keyed_series_uid", keyed_series_uid)

    async def entries(self) -> list[CatalogEntry]:
        async with self.db.execute(f"SELECT {_COLUMNS} FROM published_bundles ORDER BY updated_at") as cur:
            return [_entry(r) for r in await cur.fetchall()]

    async def put_built(self, entry: CatalogEntry) -> None:
        """A new bundle for the series (replaces an older one for the same series)."""
        await self.db.execute(
            f"INSERT OR REPLACE INTO published_bundles({_COLUMNS}, updated_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (entry.series_uid, entry.keyed_series_uid, entry.bundle_id, entry.bundle_key,
             entry.content, entry.size, entry.plain_size, entry.instances,
             json.dumps(list(entry.share_holders)), json.dumps(list(entry.replica_holders)),
             "built", time.time()))

    async def advance(self, bundle_id: str, state: str, *, share_holders: list[str] | None = None,
                      replica_holders: list[str] | None = None) -> None:
        if state not in STATES:
            raise CatalogError(f"unknown catalogue state {state!r}")
        sets, params = ["state=?", "updated_at=?"], [state, time.time()]
        for column, value in (("share_holders", share_holders), ("replica_holders", replica_holders)):
            if value is not None:
                sets.append(f"{column}=?")
                params.append(json.dumps(list(value)))
        await self.db.execute(f"UPDATE published_bundles SET {', '.join(sets)} WHERE bundle_id=?",
                              (*params, bundle_id))
