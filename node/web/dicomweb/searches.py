"""Per-site status of recent federated searches, for the web app's status strip.

A QIDO-RS answer is a plain JSON array, so which sites answered (ok / timeout / denied /
unreachable, with latency) is kept here under a random id that the answer names in its
``X-Medfed-Search`` header; ``GET .../searches/{id}`` returns it to the same user only.
Bounded: the oldest searches are forgotten first.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from node.query.service import SiteStatus


@dataclass
class SearchRecord:
    owner: str                     # the requester's handle
    level: str
    sites: list[SiteStatus]
    partial: bool                  # some planned site did not answer in time or at all
    elapsed_ms: float
    note: str = ""
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "partial": self.partial, "elapsed_ms": self.elapsed_ms,
                "note": self.note, "sites": [vars(s) for s in self.sites]}

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for s in self.sites:
            counts[s.status] = counts.get(s.status, 0) + 1
        return ",".join(f"{k}={v}" for k, v in sorted(counts.items()))


class SearchBook:
    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._records: OrderedDict[str, SearchRecord] = OrderedDict()

    def add(self, record: SearchRecord) -> str:
        search_id = secrets.token_urlsafe(12)
        self._records[search_id] = record
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)
        return search_id

    def get(self, search_id: str, owner: str) -> SearchRecord | None:
        record = self._records.get(search_id)
        return record if record is not None and record.owner == owner else None
