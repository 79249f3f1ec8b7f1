"""A member that floods one node with index records fills only its own share: past
``max_records_per_publisher`` new records are refused (STORE_ACK FULL, counted), updates
of what it already holds still pass, and other publishers still get in — in memory and
in the SQLite record store."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from node.dht.cluster import start_cluster
from node.dht.config import DHTConfig
from node.dht.messages import Kind, StoreRequest, StoreStatus, decode_store_ack
from node.dht.records import sign_record
from node.dht.storage import MemoryRecordStore, PutResult
from node.dht.storage_sqlite import SQLiteRecordStore
from node.dht.pairkeys import PairKeys
from node.dht.wire import open_datagram, seal
from node.identity import NodeIdentity
from tests.dht.test_dht_hostile import open_probe

HOUR_MS = 3_600_000
QUOTA = 5


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_one_publisher_cannot_fill_a_running_node() -> None:
    cluster = await start_cluster(2, DHTConfig(rpc_timeout=10, max_records_per_publisher=QUOTA))
    flooder, other = NodeIdentity.generate(), NodeIdentity.generate()
    for who in (flooder, other):
        cluster.membership.add(who.verify_key)
    transport, probe = await open_probe()
    try:
        target = cluster.servers[1]

        async def store(who: NodeIdentity, key: bytes, count: int = 1) -> StoreStatus:
            t = now_ms()
            body = StoreRequest(sign_record(who, key, count, t, t + HOUR_MS)).encode()
            transport.sendto(seal(who, Kind.STORE, os.urandom(8), now_ms(), body,
                                  target.node_id), target.address)
            reply = await probe.reply(Kind.STORE_ACK)
            assert reply is not None
            return decode_store_ack(open_datagram(reply, cluster.membership, who.node_id,
                                                 PairKeys(who)).body)

        keys = [os.urandom(32) for _ in range(QUOTA + 3)]
        got = [await store(flooder, k) for k in keys]
        assert got == [StoreStatus.STORED] * QUOTA + [StoreStatus.FULL] * 3
        assert target.stats["store_over_quota"] == 3
        assert await store(flooder, keys[0], count=2) == StoreStatus.STORED   # an update
        assert await store(other, keys[-1]) == StoreStatus.STORED
        assert await target.keeper.store.count() == QUOTA + 1
    finally:
        transport.close()
        await cluster.stop()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_both_record_stores_keep_the_quota_and_free_it_on_expiry(
        kind: str, tmp_path: Path) -> None:
    store = (MemoryRecordStore() if kind == "memory"
             else await SQLiteRecordStore.open(tmp_path / "dht.sqlite"))
    me = NodeIdentity.generate()
    t = now_ms()
    try:
        short = [sign_record(me, os.urandom(32), 1, t, t + 1000) for _ in range(2)]
        for record in short:
            assert await store.put(record, 2) is PutResult.STORED
        late = sign_record(me, os.urandom(32), 1, t, t + HOUR_MS)
        assert await store.put(late, 2) is PutResult.OVER_QUOTA
        assert await store.sweep(t + 2000) == 2
        assert await store.put(late, 2) is PutResult.STORED
    finally:
        if isinstance(store, SQLiteRecordStore):
            await store.close()


def test_the_quota_is_validated() -> None:
    with pytest.raises(ValueError, match="max_records_per_publisher"):
        DHTConfig(max_records_per_publisher=0)
