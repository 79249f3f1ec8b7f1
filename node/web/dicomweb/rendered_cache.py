"""A small memory of frames already rendered from local instances, bounded by bytes.

Viewers ask for the same rendered frame again (thumbnails, a stack scrolled back and
forth); rendering a 512 x 512 slice costs about 1 ms, a hit a dictionary look-up. An
entry is keyed by the stored file as it is now (path, size, modification time, inode),
the frame number and every rendering option, so a file stored again or another window,
quality or viewport is rendered anew. Other sites' instances are not kept: they are
already in memory, and what is decrypted for one requester is never served to another.
Looked up only after the request was authorised for the instance, on the event loop
(a hit costs a stat, not a hop to a worker thread: under CPU contention each hop waits
for the scheduler).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from typing import Callable, Hashable

from .instances import InstanceView
from .rendered import RenderOptions

DEFAULT_MAX_BYTES = 16 << 20
Render = Callable[[InstanceView, int, RenderOptions], bytes]


class RenderedCache:
    """Rendered images, least recently used out first (safe from any thread)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def _key(self, view: InstanceView, number: int, opts: RenderOptions) -> Hashable | None:
        if view.path is None:
            return None
        try:
            st = os.stat(view.path)
        except OSError:
            return None
        return (str(view.path), st.st_size, st.st_mtime_ns, st.st_ino, number, opts)

    def get(self, view: InstanceView, number: int,
            opts: RenderOptions) -> tuple[Hashable | None, bytes | None]:
        """(key, image kept for it); a file's stat only, so a hit needs no worker thread."""
        key = self._key(view, number, opts)
        if key is None:
            return None, None
        with self._lock:
            image = self._items.get(key)
            if image is not None:
                self._items.move_to_end(key)
            return key, image

    def put(self, key: Hashable | None, image: bytes) -> None:
        if key is not None and len(image) <= self.max_bytes // 8:
            self._put(key, image)

    async def render(self, view: InstanceView, number: int, opts: RenderOptions,
                     render: Render) -> bytes:
        """The image from memory, else ``render``-ed now in a worker thread and kept."""
        key, image = self.get(view, number, opts)
        if image is None:
            image = await asyncio.to_thread(render, view, number, opts)
            self.put(key, image)
        return image

    def _put(self, key: Hashable, image: bytes) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = image
            self._size += len(image)
            while self._size > self.max_bytes:
                _old, gone = self._items.popitem(last=False)
                self._size -= len(gone)
