"""One stored instance as WADO-RS serves it, wherever its bytes live.

Local instances are Part-10 files in the node's store (read when served); instances of
another site's series are Part-10 bytes held in the home node's memory cache after the
bundle was decrypted there. Everything WADO-RS does works on this one shape.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from .errors import NotFound


@dataclass(frozen=True)
class InstanceView:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: Path | None = None            # local file
    data: bytes | None = None           # decrypted remote instance (memory only)
    header: Dataset | None = field(default=None, compare=False, repr=False)

    @property
    def remote(self) -> bool:
        return self.data is not None

    def read_sync(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    async def read(self) -> bytes:
        if self.data is not None:
            return self.data
        return await asyncio.to_thread(self.read_sync)


def select(views: list[InstanceView], sop_uid: str | None) -> list[InstanceView]:
    if sop_uid is None:
        return views
    chosen = [v for v in views if v.sop_uid == sop_uid]
    if not chosen:
        raise NotFound("no such instance in this series")
    return chosen


def describe(views: list[InstanceView]) -> dict[str, Any]:
    """PHI-free facts for an audit entry."""
    return {"instances": len(views), "remote": any(v.remote for v in views)}
