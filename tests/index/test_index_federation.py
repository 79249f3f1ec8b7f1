"""Index publishing and DHT planning in real federations (mTLS peers, UDP DHT on loopback).

Ground truth is always each node's own store (SQL), never the index under test.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from pathlib import Path

import pytest
import pytest_asyncio

from node.config.model import NodeConfig
from node.deid.actions import pseudonym
from node.dht.index_keys import IndexKeys
from node.dht.records import encode_record
from node.dht.storage import MemoryRecordStore
from node.index.publisher import IndexPublisher, IndexPublisherError
from node.index.terms import coarse_count, is_coarse
from node.node import Node
from node.query.dht_planner import DhtPlanner, plan_for
from node.query.model import FederatedQuery
from node.query.planner import Plan
from node.store.ingest_local import ingest_dataset
from node.synth.generate import iter_datasets
from node.synth.plan import PhiOverrides
from node.testing.nodes import loopback_config
from node.testing.federation import LocalFederation, start_federation
from tests.dht_support import LOADED

N_BIG = 30
PER_SITE = 3          # node i holds patients i+1 .. i+3, so most patients live at 3 sites
CANARY = PhiOverrides(patient_name="CANARYNAME^P{i}", patient_id="CANARYPID{i}Q",
                      birth_date=lambda i: f"1901{1 + i % 12:02d}{1 + i % 27:02d}")


# What these tests check is recall and narrowing, not lookup latency (the simulator
# measures that, in virtual time): the planner gets a deadline no busy host reaches, so a
# slow lookup on a loaded machine cannot turn a narrowed plan into a broadcast.
PLAN_DEADLINE_S = 120.0


async def plan_at(node: Node, query: FederatedQuery) -> Plan:
    return await plan_for(node, query, lookup_deadline_s=PLAN_DEADLINE_S)


def canary_values(i: int) -> tuple[str, str, str]:
    return (f"CANARYNAME^P{i}", f"CANARYPID{i}Q", f"1901{1 + i % 12:02d}{1 + i % 27:02d}")


async def ingest_patients(node: Node, site: int, first: int, count: int = PER_SITE) -> None:
    """Patients first+1 .. first+count (same identity at every site), tiny images."""
    for ds in iter_datasets(patients=count, patient_offset=first, studies=1, series=1,
                            slices=1, rows=16, cols=16, site_seed=100 + site, phi=CANARY,
                            modality="CT" if site % 2 == 0 else "MR"):
        await ingest_dataset(node.store, node.files, ds)


async def sql_holders(fed: LocalFederation, sql: str, params: tuple[object, ...]) -> set[str]:
    """Node ids whose store has at least one row for ``sql`` (the broadcast truth)."""
    out = set()
    for node in fed.nodes:
        row = await node.store.fetchone(sql, params)
        if row and row[0]:
            out.add(node.node_id)
    return out


PATIENT_SQL = ("SELECT count(*) FROM patient_phi ph JOIN studies st "
               "ON st.patient_id = ph.patient_id WHERE ph.pid = ?")


async def delete_patient(node: Node, pid: str) -> None:
    sel = "SELECT patient_id FROM patient_phi WHERE pid = ?"
    await node.store.run_in_transaction([
        ("DELETE FROM instances WHERE series_id IN (SELECT se.id FROM series se JOIN studies "
         f"st ON st.id = se.study_id WHERE st.patient_id IN ({sel}))", (pid,)),
        (f"DELETE FROM series WHERE study_id IN (SELECT id FROM studies WHERE patient_id "
         f"IN ({sel}))", (pid,)),
        (f"DELETE FROM studies WHERE patient_id IN ({sel})", (pid,)),
        (f"DELETE FROM patients WHERE id IN ({sel})", (pid,))])


def publisher(node: Node) -> IndexPublisher:
    svc = node.service(IndexPublisher.name)
    assert isinstance(svc, IndexPublisher)
    return svc


def held_records(node: Node) -> list:  # type: ignore[type-arg]
    """Every record this node holds for others (in-memory DHT store)."""
    assert node.dht is not None
    store = node.dht.keeper.store
    assert isinstance(store, MemoryRecordStore)
    return [r for slot in store._data.values() for r in slot.values()]


# ----------------------------------------------------------------- 30-node federation

@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def big(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalFederation]:
    fed = await start_federation(tmp_path_factory.mktemp("big"),
                                 [f"site{i:02d}" for i in range(N_BIG)], dht_config=LOADED,
                                 services=lambda i, n: [IndexPublisher(poll_s=600)])
    try:
        for i, node in enumerate(fed.nodes):
            await ingest_patients(node, i, i)
        for node in fed.nodes:
            report = await publisher(node).sync_now()
            assert report.failed == 0 and report.terms > 0
        yield fed
    finally:
        await fed.stop()


pytestmark = pytest.mark.asyncio(loop_scope="module")


async def lookup_all(reader: Node, keys: list[bytes]) -> list[set[bytes]]:
    """Publishers found under each key, with bounded parallel lookups (as the planner)."""
    gate = asyncio.Semaphore(8)

    async def get(key: bytes) -> set[bytes]:
        async with gate:
            result = await reader.dht.get(key)  # type: ignore[union-attr]
        return {r.publisher for r in result.records if r.count > 0}

    return list(await asyncio.gather(*(get(k) for k in keys)))


async def test_every_sites_records_are_found_by_other_nodes(big: LocalFederation) -> None:
    """Each site's full term set, read back by two other sites far apart in the list
    (the 4-node test below does every pair)."""
    for i, site in enumerate(big.nodes):
        keys = list(publisher(site).local_counts())
        assert len(keys) >= PER_SITE + 2  # its patients + modality terms
        me = bytes.fromhex(site.node_id)
        for reader in (big.nodes[(i + 1) % N_BIG], big.nodes[(i + N_BIG // 2) % N_BIG]):
            assert all(me in found for found in await lookup_all(reader, keys))


async def test_single_patient_query_asks_only_holders_with_full_recall(
        big: LocalFederation) -> None:
    asked, holding, hops, rpcs = [], [], [], []
    for p in range(1, N_BIG + PER_SITE):
        home = big.nodes[(p * 7) % N_BIG]
        truth = await sql_holders(big, PATIENT_SQL, (canary_values(p)[1],))
        plan = await plan_at(home, FederatedQuery(patient_id=canary_values(p)[1]))
        assert plan.mode == "dht"
        assert {m.node_id for m in plan.sites} == truth  # recall 100 %, nobody extra
        assert plan.skipped == N_BIG - len(truth)
        asked.append(len(plan.sites))
        holding.append(len(truth))
        hops.append(plan.detail["hops"])
        rpcs.append(plan.detail["rpcs"])
    assert sum(asked) == sum(holding) and max(asked) == PER_SITE
    print(f"\n[index] {N_BIG} nodes, {len(asked)} single-patient queries: sites asked "
          f"mean {sum(asked) / len(asked):.2f} (holding {sum(holding) / len(holding):.2f}, "
          f"broadcast {N_BIG}); lookup hops mean {sum(hops) / len(hops):.2f} max {max(hops)}, "
          f"RPCs per lookup mean {sum(rpcs) / len(rpcs):.1f}")


async def test_modality_bodypart_month_query_plans_exactly_matching_sites(
        big: LocalFederation) -> None:
    row = await big.nodes[0].store.fetchone(
        "SELECT se.modality, se.body_part, st.study_date FROM series se "
        "JOIN studies st ON st.id = se.study_id LIMIT 1")
    assert row is not None
    modality, body_part, day = row
    month = date(int(day[:4]), int(day[4:6]), 1)
    truth = await sql_holders(big, (
        "SELECT count(*) FROM series se JOIN studies st ON st.id = se.study_id "
        "WHERE se.modality = ? AND se.body_part = ? AND substr(st.study_date, 1, 6) = ?"),
        (modality, body_part, day[:6]))
    query = FederatedQuery(modality=modality, body_part=body_part, study_date_from=month,
                           study_date_to=month.replace(day=28))
    plan = await plan_at(big.nodes[5], query)
    # a site may hold the month and the body part in different studies: superset, never less
    assert plan.mode == "dht" and truth <= {m.node_id for m in plan.sites}
    assert len(plan.sites) < N_BIG and plan.detail["terms"] == ["modality+bodypart",
                                                                 "modality+month"]


async def test_a_key_read_that_runs_out_of_pages_asks_everyone(big: LocalFederation) -> None:
    """The most common modality + body part is published by more sites than one page
    holds. A reader allowed one page per holder cannot know the sites past it, so the
    planner asks every member instead of the few it read."""
    sites: dict[tuple[str, str], int] = {}
    for node in big.nodes:
        for modality, body_part in await node.store.fetchall(
                "SELECT DISTINCT modality, body_part FROM series", ()):
            sites[(modality, body_part)] = sites.get((modality, body_part), 0) + 1
    (modality, body_part), holders = max(sites.items(), key=lambda kv: (kv[1], kv[0]))
    assert holders > 7                           # ~7 signed records fit one datagram
    reader = big.nodes[5]
    assert reader.dht is not None
    query = FederatedQuery(modality=modality, body_part=body_part)
    narrowed = await plan_at(reader, query)
    assert narrowed.mode == "dht" and holders <= len(narrowed.sites) < N_BIG
    config = reader.dht.config
    reader.dht.config = replace(config, max_value_pages=1)
    reader.dht._rpc().config = reader.dht.config
    try:
        plan = await plan_at(reader, query)
    finally:
        reader.dht.config = reader.dht._rpc().config = config
    assert plan.mode == "broadcast" and len(plan.sites) == N_BIG
    assert "more records than one read fetches" in plan.detail["reason"]


async def test_no_plain_identifier_in_any_dht_key_or_record(big: LocalFederation) -> None:
    planted = [v for i in range(1, N_BIG + PER_SITE) for v in canary_values(i)]
    # the canaries really are in the stores, and the pseudonyms are derived from them
    assert await sql_holders(big, PATIENT_SQL, (planted[1],))
    secrets = big.nodes[0].membership.secrets  # type: ignore[union-attr]
    planted += [pseudonym(canary_values(i)[1], "", secrets.linkage_key)
                for i in range(1, N_BIG + PER_SITE)]
    needles = [v.encode() for v in planted] + [v.encode("utf-16-le") for v in planted]
    scanned = 0
    for node in big.nodes:
        for record in held_records(node):
            blob = record.key + encode_record(record)
            assert not [n for n in needles if n in blob]
            scanned += 1
    assert scanned >= N_BIG * 8  # every site's terms, k copies each


async def test_records_carry_only_coarse_counts(big: LocalFederation) -> None:
    members = {bytes.fromhex(n.node_id) for n in big.nodes}
    records = [r for node in big.nodes for r in held_records(node)]
    assert records and all(is_coarse(r.count) and r.count >= 1 for r in records)
    assert {r.publisher for r in records} == members
    assert all(r.payload == b"" for r in records)
    node = big.nodes[4]
    counts = publisher(node).local_counts()
    studies = await node.store.fetchone("SELECT count(*) FROM studies")
    assert studies is not None and max(counts.values()) <= coarse_count(studies[0])


async def test_recall_over_live_nodes_stays_complete_when_sites_fail(
        big: LocalFederation) -> None:
    """Runs last on the shared federation: it stops three sites for good."""
    patients = range(3, 22)   # includes every patient the stopped sites held
    truths = [await sql_holders(big, PATIENT_SQL, (canary_values(p)[1],)) for p in patients]
    for i in (4, 5, 17):
        big.down.add(i)
        await big.nodes[i].stop()
    live = [n for i, n in enumerate(big.nodes) if i not in big.down]
    plans = await asyncio.gather(*(
        plan_at(live[p % len(live)], FederatedQuery(patient_id=canary_values(p)[1]))
        for p in patients))
    live_ids = {n.node_id for n in live}
    for truth, plan in zip(truths, plans):
        assert truth & live_ids <= {m.node_id for m in plan.sites}
    narrowed = sum(p.mode == "dht" for p in plans)
    assert narrowed >= len(plans) // 2  # still narrowed, not everything broadcast
    print(f"\n[index] 3 of {N_BIG} sites down: {narrowed}/{len(plans)} plans narrowed, "
          f"recall over live holders 100 %")


# ----------------------------------------------------------------- small federations

@asynccontextmanager
async def small_federation(tmp_path: Path, names: list[str], *, poll_s: float = 600,
                           bootstrap: bool = True) -> AsyncIterator[LocalFederation]:
    fed = await start_federation(tmp_path, names, bootstrap=bootstrap, dht_config=LOADED,
                                 services=lambda i, n: [IndexPublisher(poll_s=poll_s)])
    try:
        yield fed
    finally:
        await fed.stop()


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 60.0,
                   step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(step)


@pytest.mark.asyncio(loop_scope="function")
async def test_publisher_bootstraps_and_new_data_is_findable_within_the_poll(
        tmp_path: Path) -> None:
    poll = 0.3
    async with small_federation(tmp_path, ["a", "b", "c", "d"], poll_s=poll,
                                bootstrap=False) as fed:
        for i, node in enumerate(fed.nodes):
            await ingest_patients(node, i, 10 * i, count=1)

        async def everyone_published() -> bool:
            return all(n.dht is not None and len(n.dht.routing) > 0 and publisher(n).last_report
                       and publisher(n).last_report.failed == 0  # type: ignore[union-attr]
                       and publisher(n).last_report.terms > 0  # type: ignore[union-attr]
                       for n in fed.nodes)

        assert await wait_for(everyone_published)
        for site in fed.nodes:
            keys = list(publisher(site).local_counts())
            me = bytes.fromhex(site.node_id)
            for reader in fed.nodes:
                if reader is not site:
                    assert all(me in found for found in await lookup_all(reader, keys))
        a, b = fed.nodes[0], fed.nodes[1]
        pid = canary_values(11)[1]     # b's patient
        plan = await plan_at(a, FederatedQuery(patient_id=pid))
        assert [m.node_id for m in plan.sites] == [b.node_id]
        # new data at d, nobody calls sync_now: the poll picks it up
        d = fed.nodes[3]
        started = time.monotonic()
        await ingest_patients(d, 3, 10, count=1)

        async def d_found() -> bool:
            p = await plan_at(a, FederatedQuery(patient_id=pid))
            return {m.node_id for m in p.sites} == {b.node_id, d.node_id}

        assert await wait_for(d_found)   # the 5 s figure is measured, not asserted here
        print(f"\n[index] new study findable after {time.monotonic() - started:.2f} s "
              f"(poll {poll} s)")


@pytest.mark.asyncio(loop_scope="function")
async def test_withdrawn_data_leaves_the_plan_and_home_knows_locally(tmp_path: Path) -> None:
    async with small_federation(tmp_path, ["x", "y", "z"]) as fed:
        x, y, z = fed.nodes
        await ingest_patients(y, 1, 0, count=2)    # patients 1, 2
        await ingest_patients(z, 2, 1, count=2)    # patients 2, 3
        for node in fed.nodes:
            await publisher(node).sync_now()
        pid = canary_values(2)[1]
        plan = await plan_at(x, FederatedQuery(patient_id=pid))
        assert {m.node_id for m in plan.sites} == {y.node_id, z.node_id}

        await delete_patient(y, pid)
        report = await publisher(y).sync_now()
        assert report.withdrawn >= 1 and report.failed == 0
        plan = await plan_at(x, FederatedQuery(patient_id=pid))
        assert [m.node_id for m in plan.sites] == [z.node_id] and plan.skipped == 2
        # the withdrawn site's newest record says 0
        secrets = x.membership.secrets  # type: ignore[union-attr]
        got = await x.dht.get(IndexKeys(secrets.index_key).patient_key(  # type: ignore[union-attr]
            pseudonym(pid, "", secrets.linkage_key)))
        assert {r.publisher.hex(): r.count for r in got.records}[y.node_id] == 0

        # the home node holds a patient its records have not announced yet: still planned
        await ingest_patients(x, 0, 2, count=1)   # patient 3, not synced
        plan = await plan_at(x, FederatedQuery(patient_id=canary_values(3)[1]))
        assert {m.node_id for m in plan.sites} == {x.node_id, z.node_id}


@pytest.mark.asyncio(loop_scope="function")
async def test_broadcast_fallbacks(tmp_path: Path) -> None:
    async with small_federation(tmp_path, ["p", "q", "r"]) as fed:
        p = fed.nodes[0]
        await ingest_patients(fed.nodes[1], 1, 0, count=1)
        await publisher(fed.nodes[1]).sync_now()
        members = p.membership.roster.current.active()  # type: ignore[union-attr]
        planner = DhtPlanner(p, lookup_deadline_s=3.0)
        by_patient = FederatedQuery(patient_id=canary_values(1)[1])
        patient = DhtPlanner(p, lookup_deadline_s=PLAN_DEADLINE_S)
        assert (await patient.plan(by_patient, members, broadcast=False)).mode == "dht"
        forced = await planner.plan(by_patient, members, broadcast=True)
        assert forced.mode == "broadcast" and len(forced.sites) == 3
        free = await planner.plan(FederatedQuery(description="knee"), members, broadcast=False)
        assert free.mode == "broadcast" and "no indexed" in free.detail["reason"]
        # every other DHT node gone: the lookup reaches no holder -> ask everyone
        for other in fed.nodes[1:]:
            await other.dht.stop()  # type: ignore[union-attr]
        lost = await planner.plan(by_patient, members, broadcast=False)
        assert lost.mode == "broadcast" and len(lost.sites) == 3 and lost.skipped == 0
        # nobody to hold new records: the publisher reports them failed, to retry
        await ingest_patients(p, 0, 5, count=1)
        report = await publisher(p).sync_now()
        assert report.terms > 0 and report.failed == report.terms and report.published == 0
        await p.dht.stop()  # type: ignore[union-attr]
        down = await planner.plan(by_patient, members, broadcast=False)
        assert down.mode == "broadcast" and "failed" in down.detail["reason"]


@pytest.mark.asyncio(loop_scope="function")
async def test_standalone_node_publisher_is_idle(tmp_path: Path) -> None:
    cfg: NodeConfig = loopback_config(tmp_path / "solo", name="solo")
    pub = IndexPublisher(poll_s=0.1)
    node = Node(cfg, services=[pub], with_dicom=False)
    await node.start()
    try:
        assert not pub.running
        with pytest.raises(IndexPublisherError, match="not running"):
            await pub.sync_now()
        with pytest.raises(ValueError, match="federation member"):
            await plan_for(node, FederatedQuery(modality="CT", body_part="CHEST"))
    finally:
        await node.stop()
