"""The iterative lookup's patience, in virtual time: lateness is not taken for death.

A hurried read gives up on a contact once it is late by twice its patience and twice
the slowest answer so far, and asks a farther spare instead. On a host that stalls
(every answer from the closest holders late, spares quick) that rule alone gives up on
every holder. At most k/2 contacts are given up on in one lookup, so the rest of the k
closest are waited for to their full deadline and their records are read.
"""

from __future__ import annotations

import asyncio
import hashlib

from node.dht.ids import Contact, distance
from node.dht.lookup import Reply, iterative_lookup
from node.identity import NodeIdentity
from sim.vclock import run_virtual

K = 8


def _contacts(n: int) -> list[Contact]:
    return [Contact(NodeIdentity.from_seed(f"lookup:{i}".encode()).verify_key,
                    f"10.8.0.{i + 1}", 4434) for i in range(n)]


async def _read(late_s: float) -> tuple[set[bytes], set[bytes], list[bytes]]:
    contacts = _contacts(3 * K)
    target_id = hashlib.sha256(b"a popular key").digest()[:len(contacts[0].id)]
    contacts.sort(key=lambda c: distance(c.id, target_id))
    holders = {c.id for c in contacts[:K]}

    async def query(contact: Contact) -> Reply:
        if contact.id in holders:              # alive, but late (a stalled host)
            await asyncio.sleep(late_s)
            return Reply([], records=[object()])  # type: ignore[list-item]
        await asyncio.sleep(0.01)
        return Reply([])

    given_up: list[bytes] = []
    outcome = await iterative_lookup(target_id, contacts, query, K, K, b"\0" * len(target_id),
                                     patience=lambda node_id: 0.05, gave_up=given_up.append)
    read = {node_id for node_id, reply in outcome.replies.items() if reply.records}
    return holders, read, given_up


def test_a_read_gives_up_on_at_most_half_of_the_closest_late_holders() -> None:
    holders, read, given_up = run_virtual(_read(late_s=0.5))
    assert len(given_up) <= K // 2, "every late holder was taken for dead"
    assert set(given_up) <= holders
    assert len(read) >= K - K // 2, f"records read from {len(read)} of {K} holders"


def test_holders_that_answer_in_time_are_all_read() -> None:
    holders, read, given_up = run_virtual(_read(late_s=0.03))
    assert given_up == []
    assert read == holders
