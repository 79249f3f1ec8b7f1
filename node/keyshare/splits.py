"""The owner's record of its splits: which holder got which share, and what is still to revoke.

Why persisted: repair must resume after a restart — it needs to know the current split's
holders (to notice one leaving) and the old splits whose revocation has not yet been
acknowledged by a holder that was offline at the time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from node.keyshare.db import SqliteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS splits(
    bundle_id TEXT NOT NULL,
    split_id TEXT NOT NULL,
    k INTEGER NOT NULL,
    n INTEGER NOT NULL,
    policy TEXT NOT NULL,
    created_at REAL NOT NULL,
    current INTEGER NOT NULL,
    PRIMARY KEY (bundle_id, split_id)
);
CREATE TABLE IF NOT EXISTS split_holders(
    bundle_id TEXT NOT NULL,
    split_id TEXT NOT NULL,
    holder TEXT NOT NULL,
    x INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bundle_id, split_id, holder)
);
"""


@dataclass(frozen=True)
class SplitRecord:
    bundle_id: str
    split_id: str
    k: int
    n: int
    policy: str = field(repr=False)
    holders: dict[str, int] = field(default_factory=dict)   # holder node id -> share x


class SplitBook(SqliteFile):
    SCHEMA = SCHEMA
    WHAT = "split book"

    async def record(self, split: SplitRecord) -> None:
        """The new current split of its bundle; earlier splits become due for revocation."""
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute("UPDATE splits SET current=0 WHERE bundle_id=?", (split.bundle_id,))
            await db.execute(
                "INSERT INTO splits(bundle_id, split_id, k, n, policy, created_at, current) "
                "VALUES (?,?,?,?,?,?,1)",
                (split.bundle_id, split.split_id, split.k, split.n, split.policy, time.time()))
            await db.executemany(
                "INSERT INTO split_holders(bundle_id, split_id, holder, x) VALUES (?,?,?,?)",
                [(split.bundle_id, split.split_id, h, x) for h, x in split.holders.items()])
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    async def current(self, bundle_id: str) -> SplitRecord | None:
        async with self.db.execute(
                "SELECT split_id, k, n, policy FROM splits WHERE bundle_id=? AND current=1",
                (bundle_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        async with self.db.execute(
                "SELECT holder, x FROM split_holders WHERE bundle_id=? AND split_id=?",
                (bundle_id, row[0])) as cur:
            holders = {h: int(x) for h, x in await cur.fetchall()}
        return SplitRecord(bundle_id, row[0], int(row[1]), int(row[2]), row[3], holders)

    async def bundles(self) -> list[str]:
        async with self.db.execute(
                "SELECT bundle_id FROM splits WHERE current=1 ORDER BY created_at") as cur:
            return [row[0] for row in await cur.fetchall()]

    async def pending_revocations(self) -> list[tuple[str, str, str]]:
        """(bundle_id, split_id, holder) of old splits a holder has not yet confirmed revoked."""
        async with self.db.execute(
                "SELECT h.bundle_id, h.split_id, h.holder FROM split_holders h JOIN splits s "
                "ON s.bundle_id=h.bundle_id AND s.split_id=h.split_id "
                "WHERE s.current=0 AND h.revoked=0") as cur:
            return [(a, b, c) for a, b, c in await cur.fetchall()]

    async def mark_revoked(self, bundle_id: str, split_id: str, holder: str) -> None:
        await self.db.execute(
            "UPDATE split_holders SET revoked=1 WHERE bundle_id=? AND split_id=? AND holder=?",
            (bundle_id, split_id, holder))
