"""WADO-RS metadata (PS3.18 10.4.1.1.2): instances as DICOM JSON, bulk data by reference.

Top-level binary elements over 1 KB (always the pixel data) are replaced by a
BulkDataURI under the instance's own URL; nested ones stay inline. URIs start with the
configured public base URL, or are absolute paths when none is configured — never
built from the request's Host header (some clients send it without the port).

Metadata is made per instance when it is stored (``metadata_store``), kept on disk and
cached in memory as JSON text (bounded, least recently used first out), so asking for a
series costs a store query and a join; an instance added later is converted on its own.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import struct
import warnings
from collections import OrderedDict
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from .fast_json import NotFast, header_json
from .instances import InstanceView
from .metadata_store import MetadataFile, view_size, with_base

log = logging.getLogger("medfed.dicomweb")
BULK_THRESHOLD = 1024
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
DEFAULT_CACHE_BYTES = 64 << 20


def instance_url(base: str, view: InstanceView) -> str:
    return (f"{base}/studies/{view.study_uid}/series/{view.series_uid}"
            f"/instances/{view.sop_uid}")


HEAD_BYTES = 64 << 10


def _header(view: InstanceView) -> Dataset:
    source: Any = io.BytesIO(view.data) if view.data is not None else str(view.path)
    with warnings.catch_warnings():   # pydicom warnings can quote values (PHI)
        warnings.simplefilter("ignore")
        return pydicom.dcmread(source, defer_size=BULK_THRESHOLD)


def _head_bytes(view: InstanceView, size: int) -> tuple[bytes, bool]:
    """The first ``size`` bytes of the instance and whether that is all of it."""
    if view.data is not None:
        return view.data, True
    assert view.path is not None
    with open(view.path, "rb") as fh:
        head = fh.read(size)
        return head, len(head) < size


def _fast(view: InstanceView, url: str) -> dict[str, Any]:
    def bulk(tag: int, _vr: str) -> str:
        return f"{url}/bulk/{tag:08X}"

    size = HEAD_BYTES
    while True:
        data, whole = _head_bytes(view, size)
        try:
            doc, pixel_vr = header_json(data, bulk, threshold=BULK_THRESHOLD)
        except (struct.error, IndexError, UnicodeDecodeError, ValueError) as exc:
            if whole or isinstance(exc, NotFast):
                raise NotFast(str(exc)) from None
            size *= 16
            continue
        if pixel_vr or whole:
            break
        size *= 16          # the header is longer than what was read
    if pixel_vr:
        doc["7FE00010"] = {"vr": pixel_vr, "BulkDataURI": bulk(0x7FE00010, pixel_vr)}
    return doc


def _general(view: InstanceView, url: str) -> dict[str, Any]:
    """pydicom's converter, for what ``fast_json`` does not handle."""
    ds = _header(view)
    bulk: dict[str, dict[str, str]] = {}
    for elem in list(ds):
        length = getattr(elem, "length", None)
        if length is None:
            value = elem.value
            length = len(value) if isinstance(value, (bytes, bytearray)) else 0
        if (str(elem.VR) in _BINARY_VRS and length > BULK_THRESHOLD) or elem.tag == 0x7FE00010:
            vr = str(elem.VR)
            if elem.tag == 0x7FE00010:
                compressed = UID(view.transfer_syntax).is_compressed
                vr = "OB" if compressed or int(ds.get("BitsAllocated", 16)) <= 8 else "OW"
            bulk[f"{int(elem.tag):08X}"] = {"vr": vr, "BulkDataURI": f"{url}/bulk/{int(elem.tag):08X}"}
            del ds[elem.tag]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        doc = ds.to_json_dict(bulk_data_threshold=1 << 62, suppress_invalid_tags=True)
    doc.update(bulk)
    return doc


def metadata_doc(view: InstanceView, base: str) -> dict[str, Any]:
    """One instance's metadata (blocking: reads the file's header)."""
    url = instance_url(base, view)
    try:
        doc = _fast(view, url)
    except NotFast:
        doc = _general(view, url)
    return dict(sorted(doc.items()))


def metadata_json(view: InstanceView, base: str) -> str:
    return json.dumps(metadata_doc(view, base), separators=(",", ":"))


def stored_docs(views: list[InstanceView]) -> list[tuple[InstanceView, int, str]]:
    """(view, file size, document with root-relative URIs) for each view that converts
    (blocking); one that cannot be read is left out: it is converted when asked for."""
    out = []
    for view in views:
        try:
            out.append((view, view_size(view), metadata_json(view, "")))
        except Exception as exc:   # a broken file must not stop the others
            log.info("instance metadata not made ahead: %s", type(exc).__name__)
    return out


class MetadataCache:
    """Instance metadata JSON by SOP Instance UID, bounded by total size, in front of
    the on-disk documents (``MetadataFile``) when the node has a data directory.
    Documents hold root-relative BulkDataURIs; the base goes in front when served."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES,
                 file: MetadataFile | None = None) -> None:
        self.max_bytes = max_bytes
        self.file = file
        self._items: OrderedDict[str, str] = OrderedDict()
        self._size = 0

    def _put(self, key: str, text: str) -> None:
        if key in self._items:
            return
        self._items[key] = text
        self._size += len(text)
        while self._size > self.max_bytes and self._items:
            _k, old = self._items.popitem(last=False)
            self._size -= len(old)

    def _from_file(self, views: list[InstanceView], missing: list[int],
                   texts: dict[int, str]) -> list[int]:
        """Fill ``texts`` from the file where the stored size still matches (blocking)."""
        if self.file is None:
            return missing
        stored = self.file.series(views[i].series_uid for i in missing)
        left = []
        for i in missing:
            hit = stored.get(views[i].sop_uid)
            if hit is not None and hit[0] == view_size(views[i]):
                texts[i] = hit[1]
            else:
                left.append(i)
        return left

    def _build(self, views: list[InstanceView], missing: list[int],
               texts: dict[int, str]) -> None:
        """Look in the file, convert the rest and keep them there (blocking)."""
        left = self._from_file(views, missing, texts)
        made = []
        for i in left:
            texts[i] = metadata_json(views[i], "")
            made.append((views[i], view_size(views[i]), texts[i]))
        if self.file is not None and made:
            self.file.put(made)

    async def series_json(self, views: list[InstanceView], base: str, *,
                          cache: bool = True) -> bytes:
        """``[meta, meta, ...]`` for ``views``; missing entries are read from the file or
        built in one thread hop. Remote instances are not kept here (their cache is the
        series cache)."""
        texts: dict[int, str] = {}
        missing: list[int] = []
        remote: list[int] = []
        for i, view in enumerate(views):
            if view.remote or not cache:
                remote.append(i)
                continue
            text = self._items.get(view.sop_uid)
            if text is None:
                missing.append(i)
            else:
                self._items.move_to_end(view.sop_uid)
                texts[i] = text

        def work() -> None:
            for i in remote:
                texts[i] = metadata_json(views[i], "")
            self._build(views, missing, texts)
        if missing or remote:
            await asyncio.to_thread(work)
            for i in missing:
                self._put(views[i].sop_uid, texts[i])
        joined = "[" + ",".join(texts[i] for i in range(len(views))) + "]"
        return with_base(joined, base).encode()
