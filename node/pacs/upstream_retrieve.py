"""Retrieve instances from the upstream PACS by C-GET into the scratch cache.

Why C-GET: the instances come back on our own association, so the PACS needs no route
back to this node (C-MOVE would need the node registered as a destination and its SCP
to hand incoming stores to the cache). One association per request, one C-GET per
series; each received instance is checked, written atomically, and only the ones we
asked for are kept. Rows are committed once the C-GETs end, so a failure part-way
leaves whole files recorded and nothing half-written.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Sequence

from pydicom.uid import UID
from pynetdicom import evt

from ..store.cache_rows import CachedFile
from ..store.files import FileStoreError
from . import status
from .cache import ScratchCache
from .upstream_plan import SeriesBatch, Wanted, batches, get_identifier, storage_contexts
from .upstream_scu import Abort, GetOutcome, Peer, call_blocking, get
from .validate import InvalidInstance, validate_instance

log = logging.getLogger("medfed.upstream")


@dataclass
class Receiver:
    """C-STORE sub-operations of our C-GETs: keep what was asked for, refuse the rest."""

    cache: ScratchCache
    wanted: dict[str, Wanted]
    files: list[CachedFile] = field(default_factory=list)
    refused: int = 0
    write_failed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_store(self, event: evt.Event) -> int:
        try:
            ds = event.dataset
            ts = UID(event.context.transfer_syntax)
            _cls, sop_uid, study_uid, series_uid = validate_instance(
                ds, context_sop_class=event.context.abstract_syntax,
                affected_sop_instance=event.request.AffectedSOPInstanceUID or "",
                transfer_syntax=ts)
        except InvalidInstance as exc:
            return self._refuse(exc.status, exc.reason)
        except Exception as exc:  # undecodable dataset
            return self._refuse(status.CANNOT_PARSE, type(exc).__name__)
        want = self.wanted.get(sop_uid)
        if want is None or (want.study_uid, want.series_uid) != (study_uid, series_uid):
            return self._refuse(status.CANNOT_UNDERSTAND, "instance was not requested")
        try:
            rel, size, sha = self.cache.write(study_uid, series_uid, sop_uid,
                                              event.encoded_dataset(include_meta=True))
        except (FileStoreError, ValueError) as exc:
            log.error("cannot cache a retrieved instance: %s", exc)
            with self._lock:
                self.write_failed = True
            return status.OUT_OF_RESOURCES
        with self._lock:
            self.files.append(CachedFile(want.instance_id, rel, size, sha, str(ts)))
        return status.SUCCESS

    def snapshot(self) -> list[CachedFile]:
        with self._lock:
            return list(self.files)

    def _refuse(self, code: int, reason: str) -> int:
        log.warning("refused an instance sent by the upstream PACS: %s", reason)
        with self._lock:
            self.refused += 1
        return code


@dataclass(frozen=True)
class RetrieveResult:
    files: list[CachedFile]
    outcomes: list[GetOutcome]
    refused: int
    write_failed: bool


async def retrieve(peer: Peer, cache: ScratchCache, wanted: Sequence[Wanted], *,
                   per_series_deadline_s: float) -> RetrieveResult:
    """C-GET ``wanted`` and record what arrived; raises UpstreamUnavailable/Refused
    after recording whatever whole files did arrive. The hard ceiling grows with the
    number of series; each message must still come within ``peer.timeout_s``.

    Some PACS (Orthanc among them) fail a whole list C-GET when one instance is gone;
    the rest of such a series is then asked for one instance at a time.
    """
    receiver = Receiver(cache, {w.sop_uid: w for w in wanted})
    contexts = storage_contexts(wanted)
    series = batches(wanted)
    outcomes: list[GetOutcome] = []
    try:
        outcomes = await _get_batches(peer, receiver, series, contexts, per_series_deadline_s)
        got = {f.instance_id for f in receiver.snapshot()}
        retry = [SeriesBatch(b.study_uid, b.series_uid, (w,))
                 for b, o in zip(series, outcomes) if o.status not in (0, 0xB000)
                 and len(b.items) > 1 for w in b.items if w.instance_id not in got]
        if retry:
            outcomes += await _get_batches(peer, receiver, retry, contexts,
                                           peer.timeout_s * 2)
    finally:
        files = receiver.snapshot()
        await cache.record(files)
    return RetrieveResult(files, outcomes, receiver.refused, receiver.write_failed)


async def _get_batches(peer: Peer, receiver: Receiver, series: Sequence[SeriesBatch],
                       contexts: list[tuple[str, str]], each_s: float) -> list[GetOutcome]:
    """One association, one C-GET per batch; the ceiling is ``each_s`` per batch."""
    identifiers = [get_identifier(b.study_uid, b.series_uid, [w.sop_uid for w in b.items])
                   for b in series]
    abort = Abort()
    return await call_blocking(
        lambda: get(peer, identifiers, contexts, receiver.on_store, abort),
        peer=peer, abort=abort, what=f"retrieving {len(identifiers)} series",
        deadline_s=each_s * len(identifiers))
