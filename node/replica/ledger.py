"""The owner's record of where its replicas are, so repair resumes after a restart."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from node.keyshare.db import SqliteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS replica_targets(
    bundle_id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    r INTEGER NOT NULL,
    avoid TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS replica_holders(
    bundle_id TEXT NOT NULL,
    holder TEXT NOT NULL,
    placed_at REAL NOT NULL,
    checked_at REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (bundle_id, holder)
);
"""


@dataclass(frozen=True)
class Target:
    bundle_id: str
    size: int
    r: int
    avoid: frozenset[str]


class ReplicaLedger(SqliteFile):
    SCHEMA = SCHEMA
    WHAT = "replica ledger"

    async def set_target(self, target: Target) -> None:
        await self.db.execute(
            "INSERT INTO replica_targets(bundle_id, size, r, avoid) VALUES (?,?,?,?) "
            "ON CONFLICT(bundle_id) DO UPDATE SET size=excluded.size, r=excluded.r, "
            "avoid=excluded.avoid",
            (target.bundle_id, target.size, target.r, json.dumps(sorted(target.avoid))))

    async def targets(self, limit: int) -> list[Target]:
        """Least recently checked first, so a rate-limited repair round visits all in turn."""
        async with self.db.execute(
                "SELECT t.bundle_id, t.size, t.r, t.avoid FROM replica_targets t "
                "LEFT JOIN replica_holders h ON h.bundle_id=t.bundle_id "
                "GROUP BY t.bundle_id ORDER BY COALESCE(MIN(h.checked_at), 0) LIMIT ?",
                (limit,)) as cur:
            return [Target(b, int(s), int(r), frozenset(json.loads(a)))
                    for b, s, r, a in await cur.fetchall()]

    async def add(self, bundle_id: str, holder: str) -> None:
        await self.db.execute(
            "INSERT OR IGNORE INTO replica_holders(bundle_id, holder, placed_at) VALUES (?,?,?)",
            (bundle_id, holder, time.time()))

    async def remove(self, bundle_id: str, holder: str) -> None:
        await self.db.execute("DELETE FROM replica_holders WHERE bundle_id=? AND holder=?",
                              (bundle_id, holder))

    async def checked(self, bundle_id: str, holder: str) -> None:
        await self.db.execute(
            "UPDATE replica_holders SET checked_at=? WHERE bundle_id=? AND holder=?",
            (time.time(), bundle_id, holder))

    async def summary(self) -> tuple[int, int, int]:
        """(bundles this node keeps replicas of, replicas placed, bundles below target r)."""
        async with self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(n), 0), COALESCE(SUM(n < r), 0) FROM ("
                "SELECT t.r AS r, COUNT(h.holder) AS n FROM replica_targets t "
                "LEFT JOIN replica_holders h ON h.bundle_id=t.bundle_id GROUP BY t.bundle_id)") as cur:
            row = await cur.fetchone()
        return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)

    async def holders(self, bundle_id: str) -> list[str]:
        async with self.db.execute(
                "SELECT holder FROM replica_holders WHERE bundle_id=? ORDER BY placed_at",
                (bundle_id,)) as cur:
            return [row[0] for row in await cur.fetchall()]
