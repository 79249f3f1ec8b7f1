"""The index publisher keeps its terms from the store's change log (issue 12): after
adds and removals its incremental terms equal a recomputation from the whole store,
on both store backends, and a restarted publisher continues from the stored state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from node.dht.index_keys import IndexKeys
from node.index.publisher import IndexPublisher
from node.index.terms import index_terms
from node.store import index_rows
from node.store.db import MetadataStore
from node.synth.metadata import fill_store
from tests.store_backends import KINDS, open_store


@dataclass
class Secrets:
    index_key: bytes = b"i" * 32
    linkage_key: bytes = b"l" * 32


@dataclass
class Membership:
    secrets: Any


@dataclass
class Site:
    """What the publisher's term bookkeeping reads from a node: its store and keys."""

    store: MetadataStore
    membership: Membership


async def recomputed(site: Site) -> dict[bytes, int]:
    s = site.membership.secrets
    await site.store.ensure_pseudonyms(s.linkage_key)
    rows = await index_rows.all_term_rows(site.store)
    return index_terms(rows, IndexKeys(s.index_key), s.linkage_key).counts


async def delete_patient_rows(store: MetadataStore, pid: str) -> None:
    sel = "SELECT patient_id FROM patient_phi WHERE pid = ?"
    await store.run_in_transaction([
        ("DELETE FROM instances WHERE series_id IN (SELECT se.id FROM series se JOIN studies "
         f"st ON st.id = se.study_id WHERE st.patient_id IN ({sel}))", (pid,)),
        (f"DELETE FROM series WHERE study_id IN (SELECT id FROM studies WHERE patient_id "
         f"IN ({sel}))", (pid,)),
        (f"DELETE FROM studies WHERE patient_id IN ({sel})", (pid,)),
        (f"DELETE FROM patients WHERE id IN ({sel})", (pid,))])


@pytest.mark.parametrize("kind", KINDS)
async def test_incremental_terms_equal_a_full_recount(kind: str, tmp_path: Path,
                                                      request: pytest.FixtureRequest) -> None:
    async with open_store(kind, tmp_path, request) as store:
        site = Site(store, Membership(Secrets()))
        await fill_store(store, 3000, seed=5)
        pub = IndexPublisher()
        await pub._refresh(site)  # type: ignore[arg-type]
        assert pub._full and pub.local_counts() == await recomputed(site)

        pub._full = False
        await fill_store(store, 2500, seed=6)          # new patients, studies, series
        pid = str((await store.fetchone("SELECT pid FROM patient_phi ORDER BY patient_id"))[0])
        await delete_patient_rows(store, pid)          # a patient and its studies vanish
        before = dict(pub.local_counts())
        await pub._refresh(site)  # type: ignore[arg-type]
        assert not pub._full, "an incremental round must not read the whole store"
        now = await recomputed(site)
        assert pub.local_counts() == now and now != before
        withdrawn = {k for k, c in pub._terms.items() if c == 0}
        assert withdrawn == set(before) - set(now) and withdrawn  # the patient's term
        assert await index_rows.change_cursor(store) == pub._seq

        # a restarted publisher continues from the stored terms and cursor
        again = IndexPublisher()
        await again._refresh(site)  # type: ignore[arg-type]
        assert not again._full and again.local_counts() == now

        # another linkage key: every term is read again, the old ones are withdrawn
        site.membership.secrets = Secrets(linkage_key=b"m" * 32)
        await again._refresh(site)  # type: ignore[arg-type]
        assert again._full and again.local_counts() == await recomputed(site)
        assert {k for k, c in again._terms.items() if c == 0} >= set(now) - set(
            again.local_counts())


async def test_first_publish_is_rate_limited_new_terms_first(tmp_path: Path,
                                                            request: pytest.FixtureRequest
                                                            ) -> None:
    async with open_store("sqlite", tmp_path, request) as store:
        site = Site(store, Membership(Secrets()))
        await fill_store(store, 4000, seed=7)
        pub = IndexPublisher(poll_s=1.0, publish_rate=10.0, parallel=2)
        await pub._refresh(site)  # type: ignore[arg-type]
        total = len(pub.local_counts())
        first = pub._due_records()
        assert len(first) == pub.round_cap == 10 and pub._backlog == total - 10
        pub._published.update(first)            # as if the DHT accepted them
        pub._earlier.update(first)
        second = pub._due_records()
        assert not set(second) & set(first) and pub._backlog == total - 20
