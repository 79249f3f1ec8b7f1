"""The local instances a WADO-RS URL names, from the store (one indexed query).

At a node fronting an existing PACS (``[upstream]``) the store also lists instances it
knows only from the metadata sync (no file yet) or holds in the scratch cache: those are
retrieved from the PACS when asked for (one C-GET per series, ``resolve_for_serving`` —
the C-GET/C-MOVE path's own code) and stay pinned in the cache until the answer is sent
(``hold_pins``: the DICOMweb route releases what was pinned while it ran).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from pydicom.dataset import Dataset

from node.pacs.find import select_instances
from node.pacs.matching import MatchError
from node.pacs.upstream import resolve_for_serving
from node.pacs.upstream_scu import UpstreamError
from node.store.cache_rows import CACHE_PREFIX

from .errors import DicomwebError
from .instances import InstanceView

_PINS: ContextVar[list[Any] | None] = ContextVar("medfed_dicomweb_pins", default=None)


@contextlib.contextmanager
def hold_pins() -> Iterator[None]:
    """Cache pins taken inside are released on leaving (after the response is written)."""
    token = _PINS.set([])
    try:
        yield
    finally:
        for serving in _PINS.get() or ():
            serving.release()
        _PINS.reset(token)


class UpstreamUnavailable(DicomwebError):
    status = 503


async def local_instances(node: Any, study_uid: str, series_uid: str | None = None,
                          sop_uid: str | None = None) -> list[InstanceView]:
    """Instances with a local file (or retrieved from the fronted PACS now), in series /
    instance-number order (may be empty)."""
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE" if sop_uid else "SERIES" if series_uid else "STUDY"
    ident.StudyInstanceUID = study_uid
    if series_uid:
        ident.SeriesInstanceUID = series_uid
    if sop_uid:
        ident.SOPInstanceUID = sop_uid
    try:
        rows = await select_instances(node.store, ident, "STUDY_ROOT")
    except MatchError:
        return []
    upstream = getattr(node, "upstream", None)
    if upstream is None or all(r.path and not r.path.startswith(CACHE_PREFIX) for r in rows):
        return [InstanceView(r.study_uid, r.series_uid, r.sop_uid, r.sop_class_uid,
                             r.transfer_syntax, path=node.files.path(r.path))
                for r in rows if r.path is not None]
    try:
        serving = await resolve_for_serving(upstream, node.files, rows)
    except UpstreamError as exc:
        raise UpstreamUnavailable(f"the PACS this node fronts did not deliver the images: "
                                  f"{exc}") from None
    held = _PINS.get()
    if held is not None:
        held.append(serving)
    else:               # no route holding pins (a caller outside the web app): keep none
        serving.release()
    missing = set(serving.missing)
    kept = [r for r in rows if r.sop_uid not in missing]
    return [InstanceView(r.study_uid, r.series_uid, r.sop_uid, r.sop_class_uid,
                         r.transfer_syntax, path=path)
            for r, path in zip(kept, serving.paths)]
