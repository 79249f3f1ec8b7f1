"""Routing table: upstream kademlia's k-buckets, with its defects for us fixed.

Kept from ``kademlia.routing``: ``KBucket`` (LRU order, replacement cache, split) and
the relaxed split rule of the paper's §4.2. Replaced:

* ``find_neighbors`` — upstream walks buckets outward from the target's bucket in list
  order and stops after k contacts, but bucket-list adjacency is not XOR closeness (and
  the walk stops early when one side runs out), so it often returns the wrong or too
  few contacts (measured: most lookups on 100 nodes, k=8). Here it is an exact
  k-smallest selection over the table: a table holds O(k·log N) contacts, so this costs
  microseconds and is always right.
* ``get_bucket_for`` — upstream compares ``id < upper`` while buckets are inclusive
  ranges, so an id equal to a split midpoint lands in the wrong bucket.
* the id space is 256 bits (upstream hard-codes 2**160);
* a full bucket asks an injected callback to probe its oldest contact instead of
  reaching into a protocol object, and the "lonely" age is configurable.
"""

from __future__ import annotations

import bisect
import heapq
import time
from collections.abc import Callable

from kademlia.node import Node
from kademlia.routing import KBucket
from kademlia.routing import RoutingTable as _UpstreamTable

from node.dht.ids import ID_MAX, Contact

FullBucketHook = Callable[[Contact], None]


class RoutingTable(_UpstreamTable):
    def __init__(self, node: Node, ksize: int, on_full: FullBucketHook | None = None,
                 lonely_after: float = 3600.0) -> None:
        self._on_full = on_full
        self.lonely_after = lonely_after
        super().__init__(protocol=None, ksize=ksize, node=node)

    def flush(self) -> None:
        self.buckets = [KBucket(0, ID_MAX, self.ksize)]

    def get_bucket_for(self, node: Node) -> int:
        uppers = [bucket.range[1] for bucket in self.buckets]
        return bisect.bisect_left(uppers, node.long_id)

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

    def lonely_buckets(self) -> list[KBucket]:
        cutoff = time.monotonic() - self.lonely_after
        return [b for b in self.buckets if b.last_updated < cutoff]

    def contacts(self) -> list[Contact]:
        return [c for bucket in self.buckets for c in bucket.get_nodes()]

    def get_contact(self, node_id: bytes) -> Contact | None:
        found: Contact | None = self.buckets[self.get_bucket_for(Node(node_id))][node_id]
        return found

    def find_neighbors(self, node: Node, k: int | None = None,
                       exclude: Node | None = None) -> list[Contact]:
        """The exact k contacts closest to ``node`` by XOR distance."""
        k = k or self.ksize
        self.buckets[self.get_bucket_for(node)].touch_last_updated()
        skip = None if exclude is None else exclude.id
        candidates = (c for c in self.contacts() if c.id != skip)
        return heapq.nsmallest(k, candidates, key=lambda c: c.long_id ^ node.long_id)

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets)
