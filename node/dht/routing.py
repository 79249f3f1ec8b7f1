"""Routing table: upstream kademlia's k-buckets, with its defects for us fixed.

Kept from ``kademlia.routing``: ``KBucket`` (LRU order, replacement cache, split) and
the relaxed split rule of the paper's §4.2. Replaced:

* ``find_neighbors`` — upstream walks buckets outward from the target's bucket in list
  order and stops after k contacts, but bucket-list adjacency is not XOR closeness (and
  the walk stops early when one side runs out), so it often returns the wrong or too
  few contacts (measured: most lookups on 100 nodes, k=8). Here it is an exact
  k-smallest selection, visiting buckets in XOR order (below) instead of scanning every
  contact: with the relaxed split rule a table holds a large share of a small
  federation (300 simulated nodes: ~150 contacts in ~24 buckets), every served
  FIND_NODE asks for it, and the full scan was 13 % of a 300-node churn run;
* ``get_bucket_for`` — upstream compares ``id < upper`` while buckets are inclusive
  ranges, so an id equal to a split midpoint lands in the wrong bucket; here a bisection
  over bucket bounds kept between splits (the bounds list was rebuilt per call: once per
  datagram received);
* ``depth`` — upstream turns every id into a 256-character bit string to find the
  shared prefix, on every contact offered to a full bucket; here it is integer XOR;
* the id space is 256 bits (upstream hard-codes 2**160);
* a full bucket asks an injected callback to probe its oldest contact instead of
  reaching into a protocol object, and the "lonely" age is configurable;
* bucket ages are read from an injected clock (the DHT passes its event loop's: virtual
  time in the simulator, where upstream's ``time.monotonic`` never let a bucket become
  lonely, so no refresh happened however long a run lasted).

Why buckets can be visited in XOR order: the table starts with one bucket covering the
whole id space and only ever halves a bucket at its midpoint, so every bucket is the set
of ids sharing one prefix, ``[lo, lo + 2**b)`` with ``lo`` a multiple of ``2**b``. For a
target ``t`` every id in such a bucket has the same high bits of ``id ^ t``; the
distances of two buckets' ids form disjoint intervals, the nearest of a bucket
being ``(lo ^ t)`` with its low ``b`` bits cleared. Taking whole buckets in that order until k contacts are in hand, and
the k smallest of those, is the exact answer.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import time
from collections.abc import Callable

from kademlia.node import Node
from kademlia.routing import KBucket
from kademlia.routing import RoutingTable as _UpstreamTable

from node.dht.ids import ID_BITS, ID_MAX, Contact

FullBucketHook = Callable[[Contact], None]
Clock = Callable[[], float]


def loop_clock() -> float:
    """The running event loop's time (virtual in the simulator); ``time.monotonic``,
    the clock of asyncio's default loop, outside one."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class Bucket(KBucket):
    """Upstream's k-bucket with an injected clock and an integer ``depth``."""

    def __init__(self, low: int, high: int, ksize: int, clock: Clock = loop_clock) -> None:
        self._clock = clock
        super().__init__(low, high, ksize)
        size = high - low + 1
        # the log2 of its width when the bucket is a prefix range, else None
        self.width_bits = size.bit_length() - 1 \
            if size & (size - 1) == 0 and low % size == 0 else None

    def touch_last_updated(self) -> None:
        self.last_updated = self._clock()

    def split(self) -> tuple["Bucket", "Bucket"]:
        low, high = self.range
        midpoint = (low + high) // 2
        one = Bucket(low, midpoint, self.ksize, self._clock)
        two = Bucket(midpoint + 1, high, self.ksize, self._clock)
        for node in [*self.nodes.values(), *self.replacement_nodes.values()]:
            (one if node.long_id <= midpoint else two).add_node(node)
        return one, two

    def depth(self) -> int:
        """Length of the prefix all contacts' ids share (upstream's bit strings, as
        integers): ids are ``ID_BITS`` wide; a lone contact shares all of its bits."""
        ids = [n.long_id for n in self.nodes.values()]
        if not ids:
            return 0
        first = ids[0]
        differ = 0
        for other in ids[1:]:
            differ |= first ^ other
        return ID_BITS - differ.bit_length()


class RoutingTable(_UpstreamTable):
    def __init__(self, node: Node, ksize: int, on_full: FullBucketHook | None = None,
                 lonely_after: float = 3600.0, clock: Clock = loop_clock) -> None:
        self._on_full = on_full
        self.lonely_after = lonely_after
        self._clock = clock
        self._uppers: list[int] = []
        super().__init__(protocol=None, ksize=ksize, node=node)

    def flush(self) -> None:
        self.buckets = [Bucket(0, ID_MAX, self.ksize, self._clock)]
        self._uppers = [ID_MAX]

    def split_bucket(self, index: int) -> None:
        super().split_bucket(index)
        self._uppers = [bucket.range[1] for bucket in self.buckets]

    def get_bucket_for(self, node: Node) -> int:
        return bisect.bisect_left(self._uppers, node.long_id)

    def add_contact(self, node: Node) -> None:
        if node.id == self.node.id:
            return
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        if bucket.add_node(node):
            return
        if bucket.has_in_range(self.node) or bucket.depth() % 5 != 0:
            self.split_bucket(index)
            self.add_contact(node)
        elif self._on_full is not None:
            self._on_full(bucket.head())

    def takes(self, node: Node) -> bool:
        """Would ``add_contact(node)`` put it in the table (room, already there, or a
        split), rather than only in a full bucket's replacement cache?"""
        bucket = self.buckets[self.get_bucket_for(node)]
        return (node.id in bucket.nodes or len(bucket) < bucket.ksize
                or bucket.has_in_range(self.node) or bucket.depth() % 5 != 0)

    def head_for(self, node: Node) -> Contact | None:
        """The oldest contact of the bucket ``node`` falls in (None if it is empty)."""
        bucket = self.buckets[self.get_bucket_for(node)]
        return next(iter(bucket.nodes.values()), None)

    def lonely_buckets(self) -> list[KBucket]:
        cutoff = self._clock() - self.lonely_after
        return [b for b in self.buckets if b.last_updated < cutoff]

    def contacts(self) -> list[Contact]:
        return [c for bucket in self.buckets for c in bucket.nodes.values()]

    def get_contact(self, node_id: bytes) -> Contact | None:
        found: Contact | None = self.buckets[
            bisect.bisect_left(self._uppers, int.from_bytes(node_id, "big"))].nodes.get(node_id)
        return found

    def find_neighbors(self, node: Node, k: int | None = None,
                       exclude: Node | None = None) -> list[Contact]:
        """The exact k contacts closest to ``node`` by XOR distance."""
        k = k or self.ksize
        goal = node.long_id
        self.buckets[self.get_bucket_for(node)].touch_last_updated()
        skip = None if exclude is None else exclude.id
        if any(b.width_bits is None for b in self.buckets):    # not prefix ranges: scan
            candidates = (c for c in self.contacts() if c.id != skip)
            return heapq.nsmallest(k, candidates, key=lambda c: c.long_id ^ goal)
        order = sorted(self.buckets,   # by the nearest distance a bucket's ids can have
                       key=lambda b: (b.range[0] ^ goal) >> b.width_bits << b.width_bits)
        taken: list[tuple[int, Contact]] = []
        for bucket in order:
            taken.extend((c.long_id ^ goal, c) for c in bucket.nodes.values() if c.id != skip)
            if len(taken) >= k:
                break
        taken.sort(key=lambda pair: pair[0])
        return [c for _, c in taken[:k]]

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets)
