"""C-GET / C-MOVE of a federated result: the home node fetches the series, then serves them.

A viewer that found a study through the FEDERATION AE title asks for it by the UID the
C-FIND answered (the keyed StudyInstanceUID, or the real one when a site released
identified data). The home node resolves that UID into series with a federated
series-level query (filtered here, on the home side: sites only know keyed UIDs as a
function of their stored ones), fetches each series through the sharing layer — which
applies each owner's policy, audits and de-identifies — into a scratch folder, and hands
the files to the DICOM SCP. The folder is deleted when the transfer ends (``release``).

Safety over convenience: if any series of the request cannot be fetched the whole
retrieve is refused with the reason, rather than sending a study with silent gaps.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pydicom import dcmread
from pydicom.dataset import Dataset

from node.net.assertion import UserAssertion
from node.pacs import status
from node.pacs.scp import QueryRefused, RetrieveItem
from node.sharing.retrieve import (FetchError, FetchRefused, Retriever, SeriesRef,
                                   local_assertion)
from node.sharing.sinks import sink_for
from node.users import User

from .fanout import SiteAnswer
from .model import MAX_LIMIT, FederatedQuery

log = logging.getLogger("medfed.dicom")
CACHE_DIR = "federated-cache"
PARALLEL_SERIES = 3


@dataclass(frozen=True)
class SeriesTarget:
    """One series to fetch: who owns it and under which (keyed) UID it is published."""

    owner: str
    keyed_series_uid: str
    identified: bool
    instances: int


def requested_uids(identifier: Dataset) -> tuple[str, str | None]:
    """(study UID, series UID or None) named by a STUDY or SERIES level retrieve."""
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    study = str(identifier.get("StudyInstanceUID", "") or "").strip()
    series = str(identifier.get("SeriesInstanceUID", "") or "").strip()
    if level not in ("STUDY", "SERIES"):
        raise QueryRefused("the federation AE title retrieves STUDY or SERIES level only")
    if level == "SERIES" and (not series or "\\" in series):
        raise QueryRefused("a SERIES level retrieve needs one SeriesInstanceUID")
    if level == "STUDY" and (not study or "\\" in study):
        raise QueryRefused("a STUDY level retrieve needs one StudyInstanceUID")
    return study, (series if level == "SERIES" else None)


def targets_for(answers: Iterable[SiteAnswer], study_uid: str,
                series_uid: str | None) -> list[SeriesTarget]:
    """The series of the requested study (or the one series) across the sites' answers;
    a series held at two sites is fetched once."""
    found: dict[str, SeriesTarget] = {}
    for answer in answers:
        if answer.status != "ok":
            continue
        for row in answer.rows:
            keyed = row.get("series_uid")
            if not keyed or keyed in found:
                continue
            if study_uid and study_uid not in (row.get("study_uid"), row.get("study_uid_real")):
                continue
            if series_uid is not None and series_uid not in (keyed, row.get("series_uid_real")):
                continue
            found[keyed] = SeriesTarget(answer.site.node_id, keyed,
                                        answer.level == "identified", int(row.get("instances") or 0))
    return list(found.values())


def _item(path: Path) -> RetrieveItem:
    meta = dcmread(path, stop_before_pixels=True).file_meta
    return RetrieveItem(path, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))


class FederatedRetrieve:
    """Fetch-then-serve for one node; scratch folders live until ``release``."""

    def __init__(self, node: Any, *, max_instances: int = 5000) -> None:
        self.node = node
        self.max_instances = max_instances
        self.cache = Path(node.cfg.data_dir) / CACHE_DIR
        self._scratch: dict[int, Path] = {}
        self._lock = threading.Lock()
        shutil.rmtree(self.cache, ignore_errors=True)  # leftovers of a crash are never served

    def _budget_s(self) -> float:
        """Finish before the SCP stops waiting for us (its DIMSE timeout)."""
        return max(5.0, float(self.node.cfg.dicom.dimse_timeout_s) - 2.0)

    async def select(self, identifier: Dataset, *, service: Any,
                     user: User) -> list[RetrieveItem]:
        """The requested study/series as local files (query, fetch, all within budget),
        for ``user`` (a local user record) stating the first purpose the record allows."""
        study_uid, series_uid = requested_uids(identifier)
        purpose = user.purposes[0]
        try:
            async with asyncio.timeout(self._budget_s()):
                answer = await service.query(FederatedQuery(level="series", limit=MAX_LIMIT),
                                             user=user, purpose=purpose)
                targets = targets_for(answer.answers, study_uid, series_uid)
                return await self._fetch_into_scratch(targets, local_assertion(
                    self.node, user, purpose))
        except TimeoutError:
            raise QueryRefused("the sites did not deliver the study in time",
                               status.QR_SUBOPS_OUT_OF_RESOURCES) from None

    async def _fetch_into_scratch(self, targets: list[SeriesTarget],
                                  assertion: UserAssertion) -> list[RetrieveItem]:
        if not targets:
            return []
        total = sum(t.instances for t in targets)
        if total > self.max_instances:
            raise QueryRefused(f"study too large to relay ({total} > {self.max_instances} images)",
                               status.QR_SUBOPS_OUT_OF_RESOURCES)
        scratch = self.cache / secrets.token_hex(8)
        try:
            paths = await self._fetch_all(targets, scratch, assertion)
            items = await asyncio.to_thread(lambda: [_item(p) for p in paths])
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        with self._lock:
            self._scratch[id(items)] = scratch
        return items

    async def _fetch_all(self, targets: list[SeriesTarget], scratch: Path,
                         assertion: UserAssertion) -> list[Path]:
        retriever = Retriever(self.node, deadline_s=self._budget_s())
        gate = asyncio.Semaphore(PARALLEL_SERIES)

        async def one(n: int, target: SeriesTarget) -> list[Path]:
            ref = SeriesRef(target.owner, keyed_series_uid=target.keyed_series_uid)
            async with gate:
                result = await retriever.fetch(
                    ref, assertion, lambda _bid: sink_for(scratch, f"s{n:04d}", "dicom"),
                    identified=target.identified)
            return list(result.outputs)

        results = await asyncio.gather(*(one(n, t) for n, t in enumerate(targets)),
                                       return_exceptions=True)
        paths: list[Path] = []
        refused = failed = 0
        for result in results:
            if isinstance(result, FetchRefused):
                refused += 1
            elif isinstance(result, FetchError):
                failed += 1
                log.warning("federated retrieve: a series could not be fetched: %s", result)
            elif isinstance(result, BaseException):
                raise result
            else:
                paths += result
        if refused:
            raise QueryRefused(f"owning site policy refused {refused} of {len(targets)} series",
                               status.QR_SUBOPS_OUT_OF_RESOURCES)
        if failed:
            raise QueryRefused(f"{failed} of {len(targets)} series could not be fetched",
                               status.QR_SUBOPS_OUT_OF_RESOURCES)
        return paths

    def release(self, items: list[RetrieveItem]) -> None:
        """The transfer of ``items`` ended: delete their scratch folder (any thread)."""
        with self._lock:
            scratch = self._scratch.pop(id(items), None)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
