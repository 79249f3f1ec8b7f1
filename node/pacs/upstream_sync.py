"""Synchronise an upstream PACS's metadata into this node's index by C-FIND.

Why: queries (local C-FIND, the federation) must be answered from SQLite without
asking the PACS each time; images stay on the PACS until someone retrieves them.
Walks STUDY → SERIES → IMAGE (Study Root). The first sync takes every study; later
syncs only studies dated from the last sync minus the look-back, and walk a study or
series again only when the PACS reports a different instance count than we have.
A study whose StudyDate lies before that window and arrives late is picked up by a
full sync (``full=True``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..store import cache_rows
from ..store.cache_rows import SyncState
from ..store.db import MetadataStore
from ..store.records import (
    InstanceRecord,
    instance_from,
    patient_from,
    series_from,
    study_from,
)
from . import upstream_plan as plan

log = logging.getLogger("medfed.upstream")

Finder = Callable[[Dataset], Awaitable[list[Dataset]]]


@dataclass(frozen=True)
class SyncReport:
    studies_new: int
    series_new: int
    instances_new: int
    studies_seen: int
    seconds: float
    skipped: int = 0  # answers without a usable UID (a PACS bug; nothing recorded)


def _uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip().rstrip("\x00")
    return value if value and UID(value).is_valid else ""


class _Tally:
    def __init__(self) -> None:
        self.studies_new = self.series_new = self.instances_new = self.skipped = 0


async def sync_pass(store: MetadataStore, find: Finder, upstream: str, *,
                    lookback_days: int, full: bool = False) -> SyncReport:
    """One sync pass over an open C-FIND session (``find``)."""
    started = time.time()
    state = await cache_rows.get_sync_state(store, upstream)
    since = "" if full or state is None else plan.date_floor(state.last_sync_at,
                                                            lookback_days)
    studies = await find(plan.study_query(since))
    tally = _Tally()
    uids = [_uid(ds, "StudyInstanceUID") for ds in studies]
    local = await cache_rows.study_instance_counts(store, [u for u in uids if u])
    newest = state.last_study_date if state else ""
    for study_uid, study in zip(uids, studies):
        if not study_uid:
            tally.skipped += 1
            continue
        newest = max(newest, str(study.get("StudyDate", "") or "")[:8])
        if study_uid not in local:
            tally.studies_new += 1
        elif not plan.needs_walk(plan.count_of(study, "NumberOfStudyRelatedInstances"),
                                 local[study_uid]):
            continue
        await _walk_study(store, find, study_uid, study, tally)
    await cache_rows.put_sync_state(store, upstream, SyncState(started, newest, len(studies)))
    if tally.skipped:
        log.warning("upstream sync skipped %d answers without a valid UID", tally.skipped)
    return SyncReport(tally.studies_new, tally.series_new, tally.instances_new, len(studies),
                      round(time.time() - started, 3), tally.skipped)


async def _walk_study(store: MetadataStore, find: Finder, study_uid: str, study: Dataset,
                      tally: _Tally) -> None:
    series_list = await find(plan.series_query(study_uid))
    uids = [_uid(ds, "SeriesInstanceUID") for ds in series_list]
    local = await cache_rows.series_instance_counts(store, [u for u in uids if u])
    patient, study_rec = patient_from(study), study_from(study)
    for series_uid, series in zip(uids, series_list):
        if not series_uid:
            tally.skipped += 1
            continue
        if series_uid in local and not plan.needs_walk(
                plan.count_of(series, "NumberOfSeriesRelatedInstances"), local[series_uid]):
            continue
        images = await find(plan.image_query(study_uid, series_uid))
        known = await cache_rows.known_sop_uids(store, series_uid)
        series_rec = series_from(series)
        records = []
        for image in images:
            sop_uid, sop_class = _uid(image, "SOPInstanceUID"), _uid(image, "SOPClassUID")
            if not sop_uid or not sop_class:
                tally.skipped += 1
            elif sop_uid not in known:
                known.add(sop_uid)
                records.append(InstanceRecord(patient, study_rec, series_rec,
                                              instance_from(image, "")))
        new = await cache_rows.ingest_batch(store, records, "upstream")
        tally.instances_new += new
        if series_uid not in local and new:
            tally.series_new += 1
