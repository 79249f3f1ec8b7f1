"""Index keys are HMACs: after publishing a patient's index entries across SQLite-backed
nodes, no plain value appears in any key, record, record database or routing file."""

from __future__ import annotations

import hashlib
import os

from node.dht.config import DHTConfig
from node.dht.index_keys import IndexKeys
from node.dht.membership import StaticMembership
from node.dht.records import PayloadKind, encode_record
from node.dht.server import DHTServer
from node.dht.storage_sqlite import SQLiteRecordStore
from node.identity import NodeIdentity

PSEUDONYM = "PSN-7Q2X9LW4"
PLAIN = [PSEUDONYM, "CHEST", "CT|CHEST", "2024-03", "CT|2024-03"]


async def test_no_plain_index_value_reaches_keys_records_or_disk(tmp_path) -> None:
    keys = IndexKeys(os.urandom(32))
    bundle_hex = hashlib.sha256(b"bundle bytes").hexdigest()
    idents = [NodeIdentity.generate() for _ in range(6)]
    members = StaticMembership({i.verify_key for i in idents})
    stores, nodes = [], []
    try:
        for n, ident in enumerate(idents):
            stores.append(await SQLiteRecordStore.open(tmp_path / f"dht{n}.sqlite"))
            config = DHTConfig(k=4, routing_path=tmp_path / f"routing{n}.json")
            nodes.append(DHTServer(ident, members, config, storage=stores[-1]))
            await nodes[-1].start()
        for node in nodes[1:]:
            await node.bootstrap([nodes[0].address])
        index = [keys.patient_key(PSEUDONYM), keys.modality_bodypart_key("CT", "CHEST"),
                 keys.modality_month_key("CT", "2024-03"), keys.bundle_key(bundle_hex)]
        for key in index:
            await nodes[2].publish(key, 10, PayloadKind.BUNDLE_ID, bytes.fromhex(bundle_hex))
        blobs = list(index)
        for key in index:
            records = (await nodes[5].get(key)).records
            assert len(records) == 1
            blobs += [encode_record(r) for r in records]
    finally:
        for node in nodes:
            await node.stop()
        for store in stores:
            await store.close()
    disk = [p.read_bytes() for p in tmp_path.iterdir()]
    assert sum(len(d) for d in disk) > 10_000                 # databases were written
    for needle in PLAIN + [bundle_hex]:
        for encoded in {needle.encode(), needle.encode("utf-16-le")}:
            assert not any(encoded in blob for blob in blobs + disk), needle
