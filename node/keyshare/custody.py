"""A share holder's custody store: the sealed shares this node keeps for other sites.

Each share arrives sealed to this node's box key and is stored exactly so; it is
opened only in memory, at release time, to be re-sealed to the requester. A revoked
share keeps its row (so a late re-deposit of the same split is refused) but loses its
bytes. One row per (bundle, owner, split): an owner never deposits twice per split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import aiosqlite

from node.keyshare.db import SqliteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS held_shares(
    bundle_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    split_id TEXT NOT NULL,
    x INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    policy TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    deposited_at REAL NOT NULL,
    PRIMARY KEY (bundle_id, owner, split_id)
);
"""


class CustodyConflict(Exception):
    """The owner tried to deposit a different share for a split this node already holds."""


@dataclass(frozen=True)
class HeldShare:
    bundle_id: str
    owner: str
    split_id: str
    x: int
    sealed: bytes = field(repr=False)    # sealed to this node's box key
    policy: str = field(repr=False)      # the owner's signed release policy, JSON
    revoked: bool = False
    deposited_at: float = 0.0


class Custody(SqliteFile):
    SCHEMA = SCHEMA
    WHAT = "key share custody"

    async def deposit(self, share: HeldShare) -> bool:
        """Store; True if new, False for an identical retry; CustodyConflict otherwise."""
        async with self.db.execute(
                "SELECT sealed, policy, x, revoked FROM held_shares "
                "WHERE bundle_id=? AND owner=? AND split_id=?",
                (share.bundle_id, share.owner, share.split_id)) as cur:
            row = await cur.fetchone()
        if row is not None:
            if row[3]:
                raise CustodyConflict("this share was revoked by its owner; a revoked split "
                                      "is never accepted again")
            if (bytes(row[0]), row[1], row[2]) != (share.sealed, share.policy, share.x):
                raise CustodyConflict("a different share of this split is already held; an "
                                      "owner hands one node one share per split")
            return False
        await self.db.execute(
            "INSERT INTO held_shares(bundle_id, owner, split_id, x, sealed, policy, revoked,"
            " deposited_at) VALUES (?,?,?,?,?,?,0,?)",
            (share.bundle_id, share.owner, share.split_id, share.x, share.sealed, share.policy,
             time.time()))
        return True

    async def current(self, bundle_id: str, owner: str) -> HeldShare | None:
        """The newest share of the bundle that is not revoked."""
        async with self.db.execute(
                "SELECT bundle_id, owner, split_id, x, sealed, policy, revoked, deposited_at "
                "FROM held_shares WHERE bundle_id=? AND owner=? AND revoked=0 "
                "ORDER BY deposited_at DESC LIMIT 1", (bundle_id, owner)) as cur:
            row = await cur.fetchone()
        return None if row is None else _held(row)

    async def all(self, bundle_id: str) -> list[HeldShare]:
        async with self.db.execute(
                "SELECT bundle_id, owner, split_id, x, sealed, policy, revoked, deposited_at "
                "FROM held_shares WHERE bundle_id=? ORDER BY deposited_at", (bundle_id,)) as cur:
            return [_held(row) for row in await cur.fetchall()]

    async def revoke(self, bundle_id: str, owner: str, split_ids: list[str]) -> int:
        """Mark revoked and wipe the sealed bytes; returns how many shares were revoked."""
        if not split_ids:
            return 0
        marks = ",".join("?" * len(split_ids))
        cur = await self.db.execute(
            f"UPDATE held_shares SET revoked=1, sealed=x'' WHERE bundle_id=? AND owner=? "
            f"AND revoked=0 AND split_id IN ({marks})", (bundle_id, owner, *split_ids))
        return cur.rowcount


def _held(row: aiosqlite.Row) -> HeldShare:
    return HeldShare(row[0], row[1], row[2], int(row[3]), bytes(row[4]), row[5], bool(row[6]),
                     float(row[7]))
