"""The memory of rendered frames: a hit only for the same file, frame and options;
bounded by bytes; other sites' instances never kept."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian

from node.store.ingest_local import encode_part10
from node.web.dicomweb.instances import InstanceView
from node.web.dicomweb.rendered import RenderOptions, render_instance
from node.web.dicomweb.rendered_cache import RenderedCache

from tests.pixel_instances import pixel_instance


class Counting:
    """render_instance, counting how often it really rendered."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, view: InstanceView, number: int, opts: RenderOptions) -> bytes:
        self.calls += 1
        return render_instance(view, number, opts)


def _render(cache: RenderedCache, view: InstanceView, number: int, opts: RenderOptions,
            render: Counting) -> bytes:
    return asyncio.run(cache.render(view, number, opts, render))


def _file(path: Path, level: int) -> InstanceView:
    ds = pixel_instance(np.full((32, 32), level, dtype=np.uint16), WindowCenter="100",
                   WindowWidth="200")
    path.write_bytes(encode_part10(ds))
    return InstanceView("1", "2", "3", "4", ExplicitVRLittleEndian, path=path)


def test_hits_only_for_the_same_file_frame_and_options(tmp_path: Path) -> None:
    cache, render = RenderedCache(), Counting()
    view = _file(tmp_path / "a.dcm", 50)
    first = _render(cache, view, 1, RenderOptions(), render)
    assert _render(cache, view, 1, RenderOptions(), render) == first
    assert render.calls == 1
    other = _render(cache, view, 1, RenderOptions(window=(0.0, 10.0)), render)
    assert render.calls == 2 and other != first
    _render(cache, view, 1, RenderOptions(quality=50), render)
    assert render.calls == 3
    stat = os.stat(view.path)           # stored again with other pixels: rendered anew
    _file(tmp_path / "a.dcm", 150)
    os.utime(view.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    again = _render(cache, view, 1, RenderOptions(), render)
    assert render.calls == 4 and again != first


def test_bounded_by_bytes_and_remote_not_kept(tmp_path: Path) -> None:
    render = Counting()
    views = [_file(tmp_path / f"{i}.dcm", 10 * i) for i in range(20)]
    size = len(render_instance(views[0], 1, RenderOptions()))
    cache = RenderedCache(max_bytes=size * 8 + size // 2)
    for view in views:
        _render(cache, view, 1, RenderOptions(), render)
    assert 1 <= len(cache) <= 8
    remote = InstanceView("1", "2", "3", "4", ExplicitVRLittleEndian,
                          data=views[0].read_sync())
    calls = render.calls
    _render(cache, remote, 1, RenderOptions(), render)
    _render(cache, remote, 1, RenderOptions(), render)
    assert render.calls == calls + 2
