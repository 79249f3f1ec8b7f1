"""A bounded in-memory cache of decrypted remote series at the home node.

Another site's series arrives as an encrypted bundle and is decrypted here, in memory
only: nothing of it is written to this node's disk. The cache holds whole series (their
Part-10 bytes and parsed headers) up to ``max_bytes``, evicting the least recently used;
two requests for one series share one fetch. Entries are keyed by who asked (handle,
role, department, purpose), so data released to one user is never served to another.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Awaitable, Callable, Hashable

import pydicom

from .errors import DicomwebError
from .instances import InstanceView

DEFAULT_MAX_BYTES = 1 << 30


class SeriesTooLarge(DicomwebError):
    """A remote series does not fit the home node's memory cache."""
    status = 503


class MemorySink:
    """An ``InstanceSink`` (node.sharing.sinks) that keeps decoded instances in memory."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, instance: bytes) -> None:
        self._size += len(instance)
        if self._size > self.max_bytes:
            self.discard()
            raise SeriesTooLarge(f"the series is larger than the DICOMweb memory cache "
                                 f"({self.max_bytes >> 20} MB)")
        self._parts.append(bytes(instance))

    def discard(self) -> None:
        self._parts, self._size = [], 0

    def commit(self) -> list[bytes]:
        parts, self._parts = self._parts, []
        return parts


def view_of(data: bytes) -> InstanceView:
    """Parse the header of one decrypted Part-10 instance (pixels stay as bytes)."""
    with warnings.catch_warnings():   # pydicom warnings can quote values (PHI)
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    meta = ds.file_meta
    return InstanceView(str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")),
                        str(ds.get("SOPInstanceUID", "")), str(meta.MediaStorageSOPClassUID),
                        str(meta.TransferSyntaxUID), data=data, header=ds)


@dataclass
class _Entry:
    views: list[InstanceView]
    nbytes: int


class SeriesCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._inflight: dict[Hashable, asyncio.Future[list[InstanceView]]] = {}
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    async def get(self, key: Hashable,
                  fetch: Callable[[], Awaitable[list[bytes]]]) -> list[InstanceView]:
        """The series under ``key``, fetching it once if it is not cached."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry.views
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[list[InstanceView]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            parts = await fetch()
            views = await asyncio.to_thread(lambda: [view_of(p) for p in parts])
            self._put(key, views, sum(len(p) for p in parts))
            future.set_result(views)
            return views
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()          # retrieved: no "never retrieved" warning
            raise
        finally:
            self._inflight.pop(key, None)

    def _put(self, key: Hashable, views: list[InstanceView], nbytes: int) -> None:
        if nbytes > self.max_bytes:
            raise SeriesTooLarge(f"the series is larger than the DICOMweb memory cache "
                                 f"({self.max_bytes >> 20} MB)")
        while self._entries and self._size + nbytes > self.max_bytes:
            _key, old = self._entries.popitem(last=False)
            self._size -= old.nbytes
        self._entries[key] = _Entry(views, nbytes)
        self._size += nbytes
